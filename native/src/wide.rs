//! Kernels over whole vectors that run on 256-bit registers where the CPU has AVX, chosen
//! at run time (the extension itself is built for baseline x86-64, so one wheel or image
//! serves every node).
//!
//! Only element-wise multiplies, adds and subtracts, each rounded on its own: AVX gives
//! the same bits as SSE2 or scalar code for them (no fused multiply-add is ever formed;
//! Rust does not contract `a * b + c`), so a restart on a node without AVX replays the
//! same weights bit for bit. Each kernel's order of operations is the one its scalar
//! loop states.

/// `out[i] += Σ_j rows[j][i] * z[j]` for each `i`, `j` ascending: `rows` is `z.len()`
/// rows of `out.len()` values, row-major. One row at a time, so every entry's sum runs
/// in the order of `j`, whatever the register width.
pub fn add_rows_scaled(out: &mut [f64], rows: &[f64], z: &[f64]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU was just found to support AVX, the only feature the
            // function is compiled for; it touches memory only through its slices.
            unsafe { add_rows_scaled_avx(out, rows, z) };
            return;
        }
    }
    add_rows_scaled_plain(out, rows, z);
}

#[inline(always)]
fn add_rows_scaled_plain(out: &mut [f64], rows: &[f64], z: &[f64]) {
    for (row, &zj) in rows.chunks_exact(out.len()).zip(z) {
        for (slot, &value) in out.iter_mut().zip(row) {
            *slot += value * zj;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn add_rows_scaled_avx(out: &mut [f64], rows: &[f64], z: &[f64]) {
    add_rows_scaled_plain(out, rows, z);
}

/// The rank-one covariance step of an extended Kalman filter with forgetting:
/// `next[i][j] = keep * (old[i][j] - factor * (g[i] * g[j])) + 0.0` off the diagonal and
/// `keep * (old[i][i] - factor * (g[i] * g[i])) + refill` on it (`old` is `g.len()`
/// square, row-major). Returns whether every new entry is finite.
pub fn rank_one_step(
    next: &mut [f64],
    old: &[f64],
    gain: &[f64],
    factor: f64,
    keep: f64,
    refill: f64,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx") {
            // SAFETY: as in `add_rows_scaled`: AVX is present, slices only.
            return unsafe { rank_one_step_avx(next, old, gain, factor, keep, refill) };
        }
    }
    rank_one_step_plain(next, old, gain, factor, keep, refill)
}

#[inline(always)]
fn rank_one_step_plain(
    next: &mut [f64],
    old: &[f64],
    gain: &[f64],
    factor: f64,
    keep: f64,
    refill: f64,
) -> bool {
    let m = gain.len();
    for (i, (row, old)) in next
        .chunks_exact_mut(m)
        .zip(old.chunks_exact(m))
        .enumerate()
    {
        let gi = gain[i];
        for ((value, &old), &gj) in row.iter_mut().zip(old).zip(gain) {
            *value = keep * (old - factor * (gi * gj)) + 0.0;
        }
        let diagonal = old[i] - factor * (gi * gain[i]);
        row[i] = keep * diagonal + refill;
    }
    all_finite(next)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn rank_one_step_avx(
    next: &mut [f64],
    old: &[f64],
    gain: &[f64],
    factor: f64,
    keep: f64,
    refill: f64,
) -> bool {
    rank_one_step_plain(next, old, gain, factor, keep, refill)
}

/// True when no value is NaN or ±inf: an integer fold over the exponent bits, no early
/// exit, so it vectorises.
#[inline(always)]
fn all_finite(values: &[f64]) -> bool {
    const EXPONENT: u64 = 0x7ff0_0000_0000_0000;
    values.iter().fold(0u64, |bad, v| {
        bad | u64::from(v.to_bits() & EXPONENT == EXPONENT)
    }) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 8.0
            })
            .collect()
    }

    #[test]
    fn the_wide_kernels_give_the_plain_loops_bits() {
        for m in [1usize, 2, 3, 7, 29, 33] {
            let rows = values(m * m, m as u64);
            let z = values(m, 99 + m as u64);
            let mut wide = vec![0.5; m];
            let mut plain = wide.clone();
            add_rows_scaled(&mut wide, &rows, &z);
            add_rows_scaled_plain(&mut plain, &rows, &z);
            assert_eq!(
                wide.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            let (mut next_wide, mut next_plain) = (vec![0.0; m * m], vec![0.0; m * m]);
            let finite = rank_one_step(&mut next_wide, &rows, &z, 0.3, 0.98, 0.02);
            assert!(finite);
            assert!(rank_one_step_plain(
                &mut next_plain,
                &rows,
                &z,
                0.3,
                0.98,
                0.02
            ));
            assert_eq!(
                next_wide.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                next_plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            // Each entry is the stated formula, rounded step by step.
            let (i, j) = (m - 1, 0);
            let expected = if i == j {
                0.98 * (rows[i * m + j] - 0.3 * (z[i] * z[j])) + 0.02
            } else {
                0.98 * (rows[i * m + j] - 0.3 * (z[i] * z[j])) + 0.0
            };
            assert_eq!(next_wide[i * m + j].to_bits(), expected.to_bits());
        }
    }

    #[test]
    fn a_non_finite_entry_is_reported() {
        let m = 5;
        let mut rows = values(m * m, 7);
        rows[13] = f64::INFINITY;
        let mut next = vec![0.0; m * m];
        assert!(!rank_one_step(
            &mut next,
            &rows,
            &values(m, 8),
            0.1,
            0.9,
            0.1
        ));
    }
}
