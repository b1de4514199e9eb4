//! Prints the row usage and smallest k of the unlearning circuit.
//! `cargo run --release --example cost -- BLOCK N_BLOCKS` (defaults 64 1).

use edgetrain_zk::circuit::{Shape, UnlearnCircuit};
use halo2_proofs::dev::CircuitCost;
use pasta_curves::vesta;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("integer argument"))
        .collect();
    let block = *args.first().unwrap_or(&64);
    let n_blocks = *args.get(1).unwrap_or(&1);
    let shape = Shape {
        block,
        n_blocks,
        scale_bits: 16,
        tol: 1 << 23,
        y_bits: 32,
    };
    let circuit = UnlearnCircuit { shape, witness: None };
    let cost = CircuitCost::<vesta::Point, _>::measure(20, &circuit);
    let text = format!("{cost:?}");
    let field = |name: &str| -> usize {
        let at = text
            .find(&format!("{name}: "))
            .expect("field in CircuitCost debug output")
            + name.len()
            + 2;
        text[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .unwrap()
    };
    let rows = field("max_rows");
    // halo2 reserves a few rows for blinding; 10 is a safe margin here.
    let k = usize::BITS - (rows + 10).leading_zeros();
    println!(
        "B = {block}, blocks = {n_blocks}: {rows} rows (advice {}, fixed {}), {} advice columns, k = {k}",
        field("max_advice_rows"),
        field("max_fixed_rows"),
        field("num_advice_columns"),
    );
}
