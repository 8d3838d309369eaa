//! The functions the quickstart's engines run: plain Rust, registered by name.

/// The first `n` decimal digits of pi ("3141…"), by the Rabinowitz–Wagon spigot.
pub(crate) fn pi_digits(n: usize) -> String {
    let len = n * 10 / 3 + 1;
    let mut a = vec![2u64; len];
    let mut digits = String::with_capacity(n + 2);
    let mut held_nines = 0usize;
    let mut predigit: Option<u64> = None;
    let emit = |digits: &mut String, d: u64| digits.push(char::from(b'0' + d as u8));
    for _ in 0..=n {
        let mut q = 0u64;
        for i in (1..=len).rev() {
            let i = i as u64;
            let x = 10 * a[i as usize - 1] + q * i;
            a[i as usize - 1] = x % (2 * i - 1);
            q = x / (2 * i - 1);
        }
        a[0] = q % 10;
        let digit = q / 10;
        match digit {
            9 => held_nines += 1,
            10 => {
                if let Some(p) = predigit {
                    emit(&mut digits, p + 1);
                }
                for _ in 0..held_nines {
                    emit(&mut digits, 0);
                }
                predigit = Some(0);
                held_nines = 0;
            }
            _ => {
                if let Some(p) = predigit {
                    emit(&mut digits, p);
                }
                for _ in 0..held_nines {
                    emit(&mut digits, 9);
                }
                predigit = Some(digit);
                held_nines = 0;
            }
        }
    }
    if let Some(p) = predigit {
        emit(&mut digits, p);
    }
    digits.truncate(n);
    digits
}

/// How often each digit 0–9 occurs in a string of digits.
pub(crate) fn digit_counts(digits: String) -> [u64; 10] {
    let mut counts = [0u64; 10];
    for byte in digits.bytes().filter(u8::is_ascii_digit) {
        counts[usize::from(byte - b'0')] += 1;
    }
    counts
}

/// Monte Carlo: how many of `samples` random points of the unit square fall in the
/// quarter circle (xorshift64*, seeded per task so results are reproducible).
pub(crate) fn pi_hits((samples, seed): (u64, u64)) -> u64 {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..samples)
        .filter(|_| {
            let (x, y) = (next(), next());
            x * x + y * y <= 1.0
        })
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pi_starts_right() {
        assert_eq!(pi_digits(20), "31415926535897932384");
    }

    #[test]
    fn counts_add_up() {
        assert_eq!(digit_counts("1123".into()).iter().sum::<u64>(), 4);
    }

    #[test]
    fn monte_carlo_is_near_pi() {
        let hits = pi_hits((200_000, 7));
        let pi = 4.0 * hits as f64 / 200_000.0;
        assert!((pi - std::f64::consts::PI).abs() < 0.05, "{pi}");
    }
}
