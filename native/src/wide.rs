//! Code that runs on 256-bit registers where the CPU has AVX, chosen at run time (the
//! extension itself is built for baseline x86-64, so one wheel or image serves every
//! node): [`avx_dispatch`], and the vector kernels built with it.
//!
//! Only element-wise multiplies, adds, subtracts, divides and square roots get wider,
//! each rounded on its own: AVX gives the same bits as SSE2 or scalar code for them. No
//! fused multiply-add is ever formed (FMA is a target feature of its own, never enabled,
//! and Rust does not contract `a * b + c`) and no float sum is reordered, so a restart on
//! a node without AVX replays the same weights bit for bit. Each kernel's order of
//! operations is the one its plain loop states.

use crate::kalman::all_finite;

/// Defines `fn $name(args) -> R` that calls `$plain(args)` as compiled for AVX where the
/// CPU has AVX and as compiled for baseline x86-64 elsewhere. `$plain` should be
/// `#[inline(always)]`, so that its body, and what it inlines, is built both ways.
macro_rules! avx_dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?)
     $(-> $ret:ty)? => $plain:path) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx")]
            unsafe fn avx_build($($arg: $ty),*) $(-> $ret)? {
                $plain($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx") {
                    // SAFETY: the CPU was just found to support AVX, the only feature
                    // `avx_build` is compiled for; it is plain safe code otherwise.
                    return unsafe { avx_build($($arg),*) };
                }
            }
            $plain($($arg),*)
        }
    };
}
pub(crate) use avx_dispatch;

avx_dispatch! {
    /// `out[i] += Σ_j rows[j][i] * z[j]` for each `i`, `j` ascending: `rows` is `z.len()`
    /// rows of `out.len()` values, row-major. One row at a time, so every entry's sum
    /// runs in the order of `j`, whatever the register width.
    pub fn add_rows_scaled(out: &mut [f64], rows: &[f64], z: &[f64]) => add_rows_scaled_plain
}

#[inline(always)]
fn add_rows_scaled_plain(out: &mut [f64], rows: &[f64], z: &[f64]) {
    for (row, &zj) in rows.chunks_exact(out.len()).zip(z) {
        for (slot, &value) in out.iter_mut().zip(row) {
            *slot += value * zj;
        }
    }
}

avx_dispatch! {
    /// The rank-one covariance step of an extended Kalman filter with forgetting:
    /// `next[i][j] = keep * (old[i][j] - factor * (g[i] * g[j])) + 0.0` off the diagonal
    /// and `keep * (old[i][i] - factor * (g[i] * g[i])) + refill` on it (`old` is
    /// `g.len()` square, row-major). Returns whether every new entry is finite.
    pub fn rank_one_step(
        next: &mut [f64],
        old: &[f64],
        gain: &[f64],
        factor: f64,
        keep: f64,
        refill: f64,
    ) -> bool => rank_one_step_plain
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
