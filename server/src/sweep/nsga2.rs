//! NSGA-II (`[search] method = "nsga2"`), as Optuna 5.0's `NSGAIISampler` models it: each trial
//! is drawn when claimed and belongs to a generation (the latest generation among completed
//! trials, or the next once that one has `population` completed members). The parents of
//! generation g are the elite of generation g - 1's completed trials and g - 1's own parents, by
//! non-domination rank (constrained when the search has constraints) and crowding distance; they
//! are chosen once, when g's first trial is drawn, and kept (the store keeps them). A child takes
//! two parents, each the better of two drawn at random, and with probability `crossover_prob`
//! mixes them (each parameter from the second parent with probability 1 - `swapping_prob`), else
//! copies one parent; then each parameter is redrawn from its space with probability
//! `mutation_prob`. Generation 0 is drawn at random. Everything here is pure; the random stream
//! of trial `number` is (seed, number) alone, so a draw is reproducible one trial at a time.
use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::early_stop::Mode;
use super::pareto;
use super::search::Distribution;
use super::tpe::{self, parzen::Dim};

/// NSGA-II's own settings (Optuna 5.0's defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub population: i64,
    pub crossover_prob: f64,
    pub swapping_prob: f64,
    /// None: 1 / the number of parameters.
    pub mutation_prob: Option<f64>,
}

impl Options {
    pub const DEFAULT_POPULATION: i64 = 50;
    pub const MIN_POPULATION: i64 = 2;
    pub const MAX_POPULATION: i64 = 10_000;
    pub const DEFAULT_CROSSOVER_PROB: f64 = 0.9;
    pub const DEFAULT_SWAPPING_PROB: f64 = 0.5;
}

/// A completed trial as NSGA-II sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Its trial number (warm-start trials: numbered before the sweep's own).
    pub number: i64,
    pub generation: i64,
    /// Its parameters in the model's terms.
    pub x: Vec<f64>,
    /// Its objectives' values as reported.
    pub values: Vec<f64>,
    /// The sum of its constraints' violations (0: feasible); None without constraints.
    pub violation: Option<f64>,
}

/// A sampler over one space.
#[derive(Debug, Clone)]
pub struct Nsga2 {
    pub space: Vec<(String, Distribution)>,
    pub dims: Vec<Dim>,
    pub seed: i64,
    pub options: Options,
    /// Per objective: larger is better.
    pub maximize: Vec<bool>,
}

impl Nsga2 {
    pub fn new(space: &[(String, Distribution)], seed: i64, o: &Options, modes: &[Mode]) -> Self {
        Nsga2 {
            dims: tpe::dims_of(space),
            space: space.to_vec(),
            seed,
            options: o.clone(),
            maximize: modes.iter().map(|m| *m == Mode::Max).collect(),
        }
    }

    /// The generation a trial drawn now belongs to, from the completed trials' generations.
    pub fn generation_of(&self, completed: &[Member]) -> i64 {
        let latest = completed.iter().map(|m| m.generation).max().unwrap_or(0);
        let members = completed.iter().filter(|m| m.generation == latest).count();
        match (members as i64) < self.options.population {
            true => latest,
            false => latest + 1,
        }
    }

    /// The parents of `generation` (trial numbers, ascending): from `chosen` (parents chosen
    /// before, by generation) or chosen now from generation - 1 (and recursively before it);
    /// every set chosen now is added to `chosen` for the caller to keep.
    pub fn parents_of(
        &self,
        generation: i64,
        completed: &[Member],
        chosen: &mut BTreeMap<i64, Vec<i64>>,
    ) -> Vec<i64> {
        if generation <= 0 {
            return vec![];
        }
        if let Some(p) = chosen.get(&generation) {
            return p.clone();
        }
        let before = self.parents_of(generation - 1, completed, chosen);
        let pool: Vec<&Member> = completed
            .iter()
            .filter(|m| m.generation == generation - 1 || before.contains(&m.number))
            .collect();
        let mut elite: Vec<i64> = self.elite(&pool).into_iter().map(|m| m.number).collect();
        elite.sort_unstable();
        chosen.insert(generation, elite.clone());
        elite
    }

    /// The `population` best of `pool`: whole ranks while they fit, the rank that does not fit
    /// cut by crowding distance.
    pub fn elite<'a>(&self, pool: &[&'a Member]) -> Vec<&'a Member> {
        let loss: Vec<Vec<f64>> = pool.iter().map(|m| self.loss(m)).collect();
        let violations: Option<Vec<f64>> = pool
            .iter()
            .map(|m| m.violation)
            .collect::<Option<Vec<f64>>>();
        let ranks = pareto::ranks(&loss, violations.as_deref(), None);
        let size = self.options.population as usize;
        let mut elite: Vec<&Member> = vec![];
        for rank in 0..=ranks.iter().copied().max().unwrap_or(0) {
            let members: Vec<&Member> = (0..pool.len())
                .filter(|&i| ranks[i] == rank)
                .map(|i| pool[i])
                .collect();
            if elite.len() + members.len() < size {
                elite.extend(members);
                continue;
            }
            let values: Vec<Vec<f64>> = members.iter().map(|m| m.values.clone()).collect();
            let order = pareto::crowding_order(&values);
            elite.extend(
                order
                    .into_iter()
                    .take(size - elite.len())
                    .map(|i| members[i]),
            );
            break;
        }
        elite
    }

    /// A member's values as losses (maximised objectives negated).
    fn loss(&self, m: &Member) -> Vec<f64> {
        m.values
            .iter()
            .zip(&self.maximize)
            .map(|(v, max)| if *max { -v } else { *v })
            .collect()
    }

    /// Whether `a` beats `b` in a tournament: constrained domination with constraints, else
    /// domination.
    fn beats(&self, a: &Member, b: &Member) -> bool {
        let (la, lb) = (self.loss(a), self.loss(b));
        match (a.violation, b.violation) {
            (Some(va), Some(vb)) => pareto::constrained_dominates((&la, va), (&lb, vb)),
            _ => pareto::dominates(&la, &lb),
        }
    }

    /// Trial `number` drawn from the completed `members`: its generation, that generation's
    /// parents (from `chosen`, or chosen now and added to it), the child. Returns (the child's
    /// values in the model's terms, its generation).
    pub fn draw(
        &self,
        members: &[Member],
        chosen: &mut BTreeMap<i64, Vec<i64>>,
        number: i64,
    ) -> (Vec<f64>, i64) {
        let generation = self.generation_of(members);
        let ids: std::collections::HashSet<i64> = self
            .parents_of(generation, members, chosen)
            .into_iter()
            .collect();
        let parents: Vec<&Member> = members.iter().filter(|m| ids.contains(&m.number)).collect();
        (self.suggest(&parents, number), generation)
    }

    /// Trial `number`'s values in the model's terms, from its generation's `parents` (none:
    /// generation 0, drawn at random).
    pub fn suggest(&self, parents: &[&Member], number: i64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed as u64);
        rng.set_stream(number as u64);
        if parents.is_empty() {
            return self.dims.iter().map(|d| draw(d, &mut rng)).collect();
        }
        let child = self.child(parents, &mut rng);
        self.mutate(child, &mut rng)
    }

    /// Crossover of two tournament winners, or a copy of one parent.
    pub fn child(&self, parents: &[&Member], rng: &mut ChaCha8Rng) -> Vec<f64> {
        if rng.gen::<f64>() >= self.options.crossover_prob {
            return parents[rng.gen_range(0..parents.len())].x.clone();
        }
        let first = self.tournament(parents, rng);
        let rest: Vec<&Member> = parents
            .iter()
            .copied()
            .filter(|m| m.number != first.number)
            .collect();
        // A population of one member (a pool of repeats): it is its own partner.
        let second = match rest.is_empty() {
            true => first,
            false => self.tournament(&rest, rng),
        };
        first
            .x
            .iter()
            .zip(&second.x)
            .map(
                |(a, b)| match rng.gen::<f64>() >= self.options.swapping_prob {
                    true => *b,
                    false => *a,
                },
            )
            .collect()
    }

    /// The better of two members drawn at random (the second when neither beats the other).
    fn tournament<'a>(&self, pool: &[&'a Member], rng: &mut ChaCha8Rng) -> &'a Member {
        let a = pool[rng.gen_range(0..pool.len())];
        let b = pool[rng.gen_range(0..pool.len())];
        match self.beats(a, b) {
            true => a,
            false => b,
        }
    }

    /// Each parameter redrawn from its space with the mutation probability (by default one over
    /// the number of parameters that can vary, as Optuna counts them).
    pub fn mutate(&self, mut x: Vec<f64>, rng: &mut ChaCha8Rng) -> Vec<f64> {
        let varying = self.dims.iter().filter(|d| !single(d)).count();
        let p = self
            .options
            .mutation_prob
            .unwrap_or(1.0 / varying.max(1) as f64);
        for (v, d) in x.iter_mut().zip(&self.dims) {
            if rng.gen::<f64>() < p {
                *v = draw(d, rng);
            }
        }
        x
    }
}

/// A dimension with one possible value (Optuna leaves it out of the parameters it counts).
fn single(d: &Dim) -> bool {
    match *d {
        Dim::Float { lo, hi, .. } | Dim::Int { lo, hi } => lo == hi,
        Dim::Choice(n) => n == 1,
    }
}

/// A value drawn uniformly from a dimension (uniformly in ln for log scales): Optuna's random
/// sampler, which draws generation 0 and every mutation.
pub fn draw(d: &Dim, rng: &mut ChaCha8Rng) -> f64 {
    tpe::draw_uniform(d, rng)
}
