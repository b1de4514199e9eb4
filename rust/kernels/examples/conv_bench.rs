//! QLinearConv on the convolution shapes of bench/infer.py's lenet5 and rescnn at batch 64 (or the
//! batch given as the first argument), on the fastest kernel path: the minimum over 30 batches of 10 calls (steadier than a
//! median on a shared machine), and the MAC rate it gives.
//!
//!     cargo run --release --manifest-path rust/Cargo.toml -p edgetrain-kernels --example conv_bench [BATCH [NAME]]
use edgetrain_kernels::qlinear::{conv_packed, Bytes, Conv2d, Output, PackedConv};
use edgetrain_kernels::requant::Requant;
use edgetrain_kernels::Path;

fn main() {
    let one = |n, c, hw, m, k, stride, pad| {
        let out = (hw + 2 * pad - k) / stride + 1;
        Conv2d { n, c, h: hw, w: hw, m, kernel: [k, k], strides: [stride; 2], dilations: [1, 1], pads: [pad; 4], out_hw: [out, out], group: 1 }
    };
    // the batch: 64 (throughput), or the first argument (1: the single-sample latency path)
    let n: usize = std::env::args().nth(1).map_or(64, |a| a.parse().expect("the batch is a number"));
    let shapes = [
        ("lenet5 conv1 (1→6, 5×5, pad 2)", one(n, 1, 28, 6, 5, 1, 2)),
        ("lenet5 conv2 (6→16, 5×5)", one(n, 6, 14, 16, 5, 1, 0)),
        ("rescnn conv0 (1→16, 3×3, stride 2)", one(n, 1, 28, 16, 3, 2, 1)),
        ("rescnn conv1 (16→16, 3×3, pad 1)", one(n, 16, 14, 16, 3, 1, 1)),
    ];
    let path = Path::best();
    let repeats = if n < 8 { 3000 } else { 30 }; // small batches: more calls, for a profile
    println!("path {}, batch {n}", path.name());
    // a second argument keeps only the shapes whose name contains it (to profile one)
    let only = std::env::args().nth(2).unwrap_or_default();
    for (name, g) in shapes.into_iter().filter(|(name, _)| name.contains(&only)) {
        let k = g.c / g.group * g.kernel[0] * g.kernel[1];
        let x: Vec<u8> = (0..g.n * g.c * g.h * g.w).map(|i| (i * 7919 % 251) as u8).collect();
        let w: Vec<u8> = (0..g.m * k).map(|i| (i * 104729 % 253) as u8).collect();
        let (zp, bias) = (vec![0i32; g.m], vec![100i32; g.m]);
        let rq = Requant::new(&vec![1 << 30; g.m], &vec![-8; g.m], -3, -128, 127).unwrap();
        let mut out = vec![0u8; g.n * g.m * g.out_hw[0] * g.out_hw[1]];
        // the weights packed once, as the runtime packs them at load
        let packed = PackedConv::new(path, Bytes { data: &w, signed: true }, &zp, g.m, g.c / g.group, g.kernel, g.group, g.strides);
        let mut run = || conv_packed(path, &g, Bytes { data: &x, signed: true }, -5, &packed, Some(&bias), Output::Requantized(&rq, &mut out));
        let mut best = f64::MAX;
        for _ in 0..repeats {
            let t = std::time::Instant::now();
            for _ in 0..10 {
                run();
            }
            best = best.min(t.elapsed().as_secs_f64() / 10.0);
        }
        let macs = (g.n * g.m * g.out_hw[0] * g.out_hw[1] * k) as f64;
        println!("{name}: {:.4} ms ({:.1} G MAC/s)", best * 1e3, macs / best / 1e9);
    }
}
