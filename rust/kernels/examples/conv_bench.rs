//! QLinearConv on the convolution shapes of bench/infer.py's lenet5 and rescnn at batch 64,
//! on the fastest kernel path: the minimum over 30 batches of 10 calls (steadier than a
//! median on a shared machine), and the MAC rate it gives.
//!
//!     cargo run --release --manifest-path rust/Cargo.toml -p edgetrain-kernels --example conv_bench
use edgetrain_kernels::qlinear::{conv, Bytes, Conv2d, Output, Weights};
use edgetrain_kernels::requant::Requant;
use edgetrain_kernels::Path;

fn main() {
    let one = |n, c, hw, m, k, stride, pad| {
        let out = (hw + 2 * pad - k) / stride + 1;
        Conv2d { n, c, h: hw, w: hw, m, kernel: [k, k], strides: [stride; 2], dilations: [1, 1], pads: [pad; 4], out_hw: [out, out], group: 1 }
    };
    let shapes = [
        ("lenet5 conv1 (1→6, 5×5, pad 2)", one(64, 1, 28, 6, 5, 1, 2)),
        ("lenet5 conv2 (6→16, 5×5)", one(64, 6, 14, 16, 5, 1, 0)),
        ("rescnn conv0 (1→16, 3×3, stride 2)", one(64, 1, 28, 16, 3, 2, 1)),
        ("rescnn conv1 (16→16, 3×3, pad 1)", one(64, 16, 14, 16, 3, 1, 1)),
    ];
    let path = Path::best();
    println!("path {}", path.name());
    for (name, g) in shapes {
        let k = g.c / g.group * g.kernel[0] * g.kernel[1];
        let x: Vec<u8> = (0..g.n * g.c * g.h * g.w).map(|i| (i * 7919 % 251) as u8).collect();
        let w: Vec<u8> = (0..g.m * k).map(|i| (i * 104729 % 253) as u8).collect();
        let (zp, bias) = (vec![0i32; g.m], vec![100i32; g.m]);
        let rq = Requant::new(&vec![1 << 30; g.m], &vec![-8; g.m], -3, -128, 127).unwrap();
        let mut out = vec![0u8; g.n * g.m * g.out_hw[0] * g.out_hw[1]];
        let weights = Weights { bytes: Bytes { data: &w, signed: true }, zero_points: &zp, bias: Some(&bias) };
        let mut run = || conv(path, &g, Bytes { data: &x, signed: true }, -5, &weights, Output::Requantized(&rq, &mut out));
        let mut best = f64::MAX;
        for _ in 0..30 {
            let t = std::time::Instant::now();
            for _ in 0..10 {
                run();
            }
            best = best.min(t.elapsed().as_secs_f64() / 10.0);
        }
        let macs = (g.n * g.m * g.out_hw[0] * g.out_hw[1] * k) as f64;
        println!("{name}: {:.3} ms ({:.1} G MAC/s)", best * 1e3, macs / best / 1e9);
    }
}
