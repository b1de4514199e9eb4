//! Prints the rows and smallest k of the unlearning circuit, and how many
//! blocks a proof of 2^K rows holds.
//! `cargo run --release --example cost -- BLOCK N_BLOCKS [K]` (defaults 8 1 15).

use edgetrain_zk::circuit::Shape;
use edgetrain_zk::proof;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("integer argument"))
        .collect();
    let block = *args.first().unwrap_or(&8);
    let n_blocks = *args.get(1).unwrap_or(&1);
    let k = *args.get(2).unwrap_or(&15) as u32;
    let shape = Shape {
        block,
        n_blocks,
        scale_bits: 16,
        tol: 1 << 23,
        y_bits: 32,
    };
    let (degree, extended) = proof::constraint_degree();
    println!("constraint degree {degree}: extended domain {extended} × 2^k");
    let heights = proof::advice_heights(&shape).expect("valid shape");
    println!("rows per advice column (commit W, commit A, range lanes, arithmetic): {heights:?}");
    let rows = proof::rows_needed(&shape).expect("valid shape");
    let min_k = proof::min_k(&shape).expect("fits MAX_K");
    let fit = proof::max_blocks(k, &shape).expect("valid k");
    println!(
        "B = {block}, blocks = {n_blocks}: {rows} rows (blinding included), k = {min_k}; \
         2^{k} rows hold {fit} blocks ({} weights)",
        fit * block
    );
}
