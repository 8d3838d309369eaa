//! The five built-in schemes of ipyparallel's task scheduler.

use rand::Rng;

use super::{EngineLoad, Pick, Scheduler};

/// Picks the first engine with the smallest load (ipyparallel's default).
#[derive(Clone, Copy, Debug, Default)]
pub struct LeastLoad;

impl Scheduler for LeastLoad {
    fn name(&self) -> &'static str {
        "leastload"
    }

    fn select(&mut self, candidates: &[EngineLoad], _cx: &mut Pick<'_>) -> Option<usize> {
        // `min_by_key` returns the first of equal minima: the least recently used one.
        candidates
            .iter()
            .enumerate()
            .min_by_key(|(_, engine)| engine.load)
            .map(|(index, _)| index)
    }
}

/// Picks the least recently used engine.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lru;

impl Scheduler for Lru {
    fn name(&self) -> &'static str {
        "lru"
    }

    fn select(&mut self, candidates: &[EngineLoad], _cx: &mut Pick<'_>) -> Option<usize> {
        (!candidates.is_empty()).then_some(0)
    }
}

/// Picks an engine uniformly at random.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainRandom;

impl Scheduler for PlainRandom {
    fn name(&self) -> &'static str {
        "plainrandom"
    }

    fn select(&mut self, candidates: &[EngineLoad], cx: &mut Pick<'_>) -> Option<usize> {
        (!candidates.is_empty()).then(|| cx.rng.gen_range(0..candidates.len()))
    }
}

/// Draws two engines at random and takes the less recently used one.
#[derive(Clone, Copy, Debug, Default)]
pub struct TwoBin;

impl Scheduler for TwoBin {
    fn name(&self) -> &'static str {
        "twobin"
    }

    fn select(&mut self, candidates: &[EngineLoad], cx: &mut Pick<'_>) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let a = cx.rng.gen_range(0..candidates.len());
        let b = cx.rng.gen_range(0..candidates.len());
        Some(a.min(b))
    }
}

/// Draws two engines with probability inversely proportional to their load and takes the
/// lighter one.
#[derive(Clone, Copy, Debug, Default)]
pub struct Weighted;

impl Weighted {
    fn draw(weights: &[f64], total: f64, cx: &mut Pick<'_>) -> usize {
        let mut target = cx.rng.gen_range(0.0..total);
        for (index, weight) in weights.iter().enumerate() {
            if target < *weight {
                return index;
            }
            target -= weight;
        }
        weights.len() - 1
    }
}

impl Scheduler for Weighted {
    fn name(&self) -> &'static str {
        "weighted"
    }

    fn select(&mut self, candidates: &[EngineLoad], cx: &mut Pick<'_>) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let weights: Vec<f64> = candidates
            .iter()
            .map(|engine| 1.0 / (1e-6 + engine.load as f64))
            .collect();
        let total: f64 = weights.iter().sum();
        let a = Self::draw(&weights, total, cx);
        let b = Self::draw(&weights, total, cx);
        Some(if weights[a] >= weights[b] { a } else { b })
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    fn loads(values: &[usize]) -> Vec<EngineLoad> {
        values.iter().map(|&load| EngineLoad { load }).collect()
    }

    fn pick(scheme: &mut dyn Scheduler, values: &[usize], seed: u64) -> Option<usize> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut cx = Pick {
            now: tokio::time::Instant::now(),
            rng: &mut rng,
        };
        scheme.select(&loads(values), &mut cx)
    }

    #[test]
    fn leastload_takes_the_first_engine_with_the_smallest_load() {
        assert_eq!(pick(&mut LeastLoad, &[2, 0, 1, 0], 7), Some(1));
    }

    #[test]
    fn lru_takes_the_first_engine() {
        assert_eq!(pick(&mut Lru, &[5, 0], 7), Some(0));
    }

    #[test]
    fn random_schemes_stay_in_range_and_spread() {
        let mut seen = [0usize; 4];
        for seed in 0..400 {
            let index = pick(&mut PlainRandom, &[0, 0, 0, 0], seed).unwrap();
            seen[index] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        for seed in 0..100 {
            assert!(pick(&mut TwoBin, &[0, 0, 0], seed).unwrap() < 3);
        }
    }

    #[test]
    fn weighted_prefers_idle_engines() {
        let idle = (0..200)
            .filter(|&seed| pick(&mut Weighted, &[10, 0, 10], seed) == Some(1))
            .count();
        assert!(idle > 190, "{idle}");
    }
}
