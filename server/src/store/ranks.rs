//! Early stopping's ordered values, kept in memory so a decision costs O(log n) whatever the
//! number of jobs at a rung (a count over SQLite's index grows with it: 1,070 claim cycles/s at
//! 1,000 jobs, 562 at 10,000). SQLite stays the truth: a sweep's values are loaded from it the first
//! time the sweep is judged (after a restart, too), and every change here is made inside the
//! writer's batch beside the statement it mirrors. A write that is rolled back, or a batch that does
//! not commit, drops what it touched here, and the next decision loads it again from SQLite.
//!
//! Per sweep, by its rule:
//! - ASHA: the values at each rung, ordered (how many are better than this one), and each job's
//!   own, so a job that ends diverged leaves the rungs here as the trigger takes it out there.
//! - median: the completed jobs' values at each epoch, ordered (their median), the count of
//!   completed jobs, and the values of jobs not ended yet, moved in when one completes.
//! - population-based training: the members (score, point, usable pin, ended) and their params,
//!   and the sweep's decision count; a decision is the rules' own (`sweep/pbt.rs`).
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use serde_json::{Map, Value};

use crate::sweep::pbt::{self as rules, Decision, Member, Seeded, Stored};

const NIL: u32 = u32::MAX;

/// An order-statistic tree: a treap over (value, job), each node knowing its subtree's size, so
/// insert, remove, rank and select are O(log n) expected. Values are ordered by `f64::total_cmp`, as
/// the median's sort orders them.
#[derive(Debug, Default)]
pub(super) struct Ranked {
    nodes: Vec<Node>,
    free: Vec<u32>,
    root: Option<u32>,
    seed: u64,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    value: f64,
    job: i64,
    prio: u64,
    left: u32,
    right: u32,
    size: u32,
}

impl Ranked {
    pub(super) fn len(&self) -> usize {
        self.root.map_or(0, |r| self.size(r) as usize)
    }

    fn size(&self, n: u32) -> u32 {
        if n == NIL {
            0
        } else {
            self.nodes[n as usize].size
        }
    }

    fn fix(&mut self, n: u32) {
        let (l, r) = (self.nodes[n as usize].left, self.nodes[n as usize].right);
        self.nodes[n as usize].size = 1 + self.size(l) + self.size(r);
    }

    fn before(a: (f64, i64), b: (f64, i64)) -> bool {
        a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).is_lt()
    }

    fn key(&self, n: u32) -> (f64, i64) {
        let node = &self.nodes[n as usize];
        (node.value, node.job)
    }

    /// Splits `t` into the keys before `key` (or at it too, when `inclusive`) and the rest.
    fn split(&mut self, t: u32, key: (f64, i64), inclusive: bool) -> (u32, u32) {
        if t == NIL {
            return (NIL, NIL);
        }
        let k = self.key(t);
        let goes_left = Self::before(k, key) || (inclusive && k == key);
        if goes_left {
            let (l, r) = self.split(self.nodes[t as usize].right, key, inclusive);
            self.nodes[t as usize].right = l;
            self.fix(t);
            (t, r)
        } else {
            let (l, r) = self.split(self.nodes[t as usize].left, key, inclusive);
            self.nodes[t as usize].left = r;
            self.fix(t);
            (l, t)
        }
    }

    /// Joins two trees, every key of `a` before every key of `b`.
    fn merge(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if self.nodes[a as usize].prio > self.nodes[b as usize].prio {
            let m = self.merge(self.nodes[a as usize].right, b);
            self.nodes[a as usize].right = m;
            self.fix(a);
            a
        } else {
            let m = self.merge(a, self.nodes[b as usize].left);
            self.nodes[b as usize].left = m;
            self.fix(b);
            b
        }
    }

    fn next_prio(&mut self) -> u64 {
        // splitmix64: priorities need only be independent of the keys' order.
        self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Adds `job`'s value (a job holds at most one value per tree).
    pub(super) fn insert(&mut self, value: f64, job: i64) {
        let node = Node {
            value,
            job,
            prio: self.next_prio(),
            left: NIL,
            right: NIL,
            size: 1,
        };
        let n = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        let root = self.root.unwrap_or(NIL);
        let (l, r) = self.split(root, (value, job), false);
        let l = self.merge(l, n);
        let t = self.merge(l, r);
        self.root = Some(t);
    }

    /// Removes `job`'s value; whether it was there.
    pub(super) fn remove(&mut self, value: f64, job: i64) -> bool {
        let root = self.root.unwrap_or(NIL);
        let (l, rest) = self.split(root, (value, job), false);
        let (mid, r) = self.split(rest, (value, job), true);
        let t = self.merge(l, r);
        self.root = (t != NIL).then_some(t);
        if mid == NIL {
            return false;
        }
        self.free.push(mid);
        true
    }

    /// How many values satisfy `below`, a predicate true for a prefix of the order.
    fn count_prefix(&self, below: impl Fn(f64) -> bool) -> usize {
        let (mut n, mut count) = (self.root.unwrap_or(NIL), 0usize);
        while n != NIL {
            let node = &self.nodes[n as usize];
            if below(node.value) {
                count += self.size(node.left) as usize + 1;
                n = node.right;
            } else {
                n = node.left;
            }
        }
        count
    }

    /// How many values are better than `value`: larger when `max`, else smaller (equal ones are
    /// not: ties go on, as in SQL's `value > ?`).
    pub(super) fn better_than(&self, value: f64, max: bool) -> usize {
        if max {
            self.len() - self.count_prefix(|x| x <= value)
        } else {
            self.count_prefix(|x| x < value)
        }
    }

    /// The `k`-th smallest value (from 0).
    pub(super) fn select(&self, mut k: usize) -> Option<f64> {
        let mut n = self.root.unwrap_or(NIL);
        while n != NIL {
            let node = &self.nodes[n as usize];
            let left = self.size(node.left) as usize;
            match k.cmp(&left) {
                std::cmp::Ordering::Less => n = node.left,
                std::cmp::Ordering::Equal => return Some(node.value),
                std::cmp::Ordering::Greater => {
                    k -= left + 1;
                    n = node.right;
                }
            }
        }
        None
    }

    /// The median as NumPy's `nanpercentile(values, 50)` gives it (the mean of the two middle values
    /// of an even count); None when empty.
    pub(super) fn median(&self) -> Option<f64> {
        let n = self.len();
        if n == 0 {
            return None;
        }
        Some(if n % 2 == 1 {
            self.select(n / 2)?
        } else {
            (self.select(n / 2 - 1)? + self.select(n / 2)?) / 2.0
        })
    }
}

/// One sweep's ordered values, by its rule.
#[derive(Debug)]
pub(super) enum SweepRanks {
    Asha {
        /// Values at each rung.
        rungs: HashMap<i64, Ranked>,
        /// Each job's (rung, value) pairs, to take out a job that diverges.
        jobs: HashMap<i64, Vec<(i64, f64)>>,
    },
    Median {
        /// The completed jobs' values at each epoch.
        at_epoch: HashMap<i64, Ranked>,
        completed: i64,
        /// Values of jobs not ended yet, by job: (epoch, value).
        open: HashMap<i64, Vec<(i64, f64)>>,
    },
    /// Population-based training's members (decided on by `store/pbt.rs`).
    Pbt(Box<Population>),
}

impl SweepRanks {
    pub(super) fn asha(rows: impl IntoIterator<Item = (i64, i64, f64)>) -> Self {
        let mut s = SweepRanks::Asha {
            rungs: HashMap::new(),
            jobs: HashMap::new(),
        };
        for (job, rung, value) in rows {
            s.add_rung_value(job, rung, value);
        }
        s
    }

    /// `completed`: how many jobs have completed; `rows`: (job, epoch, value, whether the job has
    /// completed) for completed jobs and for those not ended yet.
    pub(super) fn median(
        completed: i64,
        rows: impl IntoIterator<Item = (i64, i64, f64, bool)>,
    ) -> Self {
        let (mut at_epoch, mut open) = (HashMap::<i64, Ranked>::new(), HashMap::new());
        for (job, epoch, value, done) in rows {
            if done {
                at_epoch.entry(epoch).or_default().insert(value, job);
            } else {
                open.entry(job)
                    .or_insert_with(Vec::new)
                    .push((epoch, value));
            }
        }
        SweepRanks::Median {
            at_epoch,
            completed,
            open,
        }
    }

    /// ASHA: records `job`'s value at `rung` (new to this rung).
    pub(super) fn add_rung_value(&mut self, job: i64, rung: i64, value: f64) {
        if let SweepRanks::Asha { rungs, jobs } = self {
            rungs.entry(rung).or_default().insert(value, job);
            jobs.entry(job).or_default().push((rung, value));
        }
    }

    /// ASHA: how many values the rung holds, and how many of them are better than `value`.
    pub(super) fn rung_counts(&self, rung: i64, value: f64, max: bool) -> (usize, usize) {
        match self {
            SweepRanks::Asha { rungs, .. } => rungs
                .get(&rung)
                .map_or((0, 0), |r| (r.len(), r.better_than(value, max))),
            SweepRanks::Median { .. } | SweepRanks::Pbt(_) => (0, 0),
        }
    }

    /// Median: `job` (not ended) reported `value` at `epoch`.
    pub(super) fn add_open_value(&mut self, job: i64, epoch: i64, value: f64) {
        if let SweepRanks::Median { open, .. } = self {
            open.entry(job).or_default().push((epoch, value));
        }
    }

    /// Median: the number of completed jobs and the median of their values at `epoch`.
    pub(super) fn median_at(&self, epoch: i64) -> (i64, Option<f64>) {
        match self {
            SweepRanks::Median {
                at_epoch,
                completed,
                ..
            } => (*completed, at_epoch.get(&epoch).and_then(Ranked::median)),
            SweepRanks::Asha { .. } | SweepRanks::Pbt(_) => (0, None),
        }
    }

    /// An attempt of `job` ended and left it `status`: a completed one's values join the median's;
    /// a diverged one leaves ASHA's rungs (as `diverged_leaves_the_rungs` does in SQLite). A job
    /// sent back to pending for another attempt keeps its values.
    pub(super) fn job_ended(&mut self, job: i64, status: protocol::JobStatus) {
        use protocol::JobStatus;
        if !status.is_final() {
            return;
        }
        match self {
            SweepRanks::Asha { rungs, jobs } => {
                if status == JobStatus::Diverged {
                    for (rung, value) in jobs.remove(&job).unwrap_or_default() {
                        if let Some(r) = rungs.get_mut(&rung) {
                            r.remove(value, job);
                        }
                    }
                }
            }
            SweepRanks::Median {
                at_epoch,
                completed,
                open,
            } => {
                let values = open.remove(&job).unwrap_or_default();
                if status == JobStatus::Completed {
                    *completed += 1;
                    for (epoch, value) in values {
                        at_epoch.entry(epoch).or_default().insert(value, job);
                    }
                }
            }
            SweepRanks::Pbt(p) => p.ended(job),
        }
    }
}

/// A PBT sweep's members in memory, in population order (job id).
#[derive(Debug)]
pub(super) struct Population {
    members: Vec<Member>,
    at: HashMap<i64, usize>,
    /// Each member's current params (what an exploit explores from).
    params: Vec<Map<String, Value>>,
    /// Decisions made: the next one draws from stream `decisions` of the sweep's seed.
    decisions: i64,
}

/// What one due report decided, and what the store writes for it.
#[derive(Debug)]
pub(super) struct Decided {
    pub(super) decision: Decision,
    /// The member is in the top: its checkpoint of this epoch is to be pinned when it arrives.
    pub(super) pinned: bool,
    /// The member's state after the decision.
    pub(super) member: Member,
    /// The decision's number (its draws' stream).
    pub(super) number: i64,
}

impl Population {
    pub(super) fn new(
        members: Vec<Member>,
        params: Vec<Map<String, Value>>,
        decisions: i64,
    ) -> Self {
        let at = members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.job, i))
            .collect();
        Population {
            members,
            at,
            params,
            decisions,
        }
    }

    /// A job ended for good: no longer ranked, never a donor again.
    pub(super) fn ended(&mut self, job: i64) {
        if let Some(&i) = self.at.get(&job) {
            self.members[i].finished = true;
        }
    }

    /// Ray's `on_trial_result` for `job`'s report, None when it is not due (or not a member). The
    /// member's pin counts only once its checkpoint has arrived ([`Population::pin_arrived`]).
    pub(super) fn decide(
        &mut self,
        job: i64,
        epoch: i64,
        value: f64,
        stored: &Stored,
    ) -> Option<Decided> {
        let i = *self.at.get(&job)?;
        if !rules::due(&stored.rules, epoch, self.members[i].perturbed_at) {
            return None;
        }
        let number = self.decisions;
        let mut draws = Seeded::new(stored.seed as u64, number as u64);
        let (params, at) = (&self.params, &self.at);
        let decision = rules::decide(
            &mut self.members,
            i,
            epoch,
            value,
            &stored.rules,
            |j| params[at[&j]].clone(),
            &mut draws,
        );
        self.decisions += 1;
        let pinned = self.members[i].pinned;
        self.members[i].pinned = false;
        if let Decision::Exploit { params, .. } = &decision {
            self.params[i] = params.clone();
        }
        Some(Decided {
            decision,
            pinned,
            member: self.members[i].clone(),
            number,
        })
    }

    /// `job`'s checkpoint of `epoch` is pinned: a donor from now on if that is still its point.
    pub(super) fn pin_arrived(&mut self, job: i64, epoch: i64) {
        if let Some(&i) = self.at.get(&job) {
            if self.members[i].perturbed_at == epoch {
                self.members[i].pinned = true;
            }
        }
    }
}

/// Every judged sweep's ordered values, and the sweeps the running write and batch have touched
/// (dropped if they are rolled back).
#[derive(Debug, Default)]
pub(super) struct Ranks(Mutex<State>);

#[derive(Debug, Default)]
struct State {
    sweeps: HashMap<i64, SweepRanks>,
    in_write: HashSet<i64>,
    in_batch: HashSet<i64>,
}

impl Ranks {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Only the writer's task takes it, one write at a time: never contended.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn is_loaded(&self, sweep: i64) -> bool {
        self.state().sweeps.contains_key(&sweep)
    }

    pub(super) fn load(&self, sweep: i64, ranks: SweepRanks) {
        let mut s = self.state();
        s.sweeps.insert(sweep, ranks);
        s.in_write.insert(sweep);
    }

    /// Drops a sweep's values (a sweep with no job left to judge): memory stays bounded by the
    /// sweeps still running; a later decision would load them again.
    pub(super) fn forget(&self, sweep: i64) {
        self.state().sweeps.remove(&sweep);
    }

    /// Reads or changes a loaded sweep's values (None when it is not loaded).
    pub(super) fn with<R>(&self, sweep: i64, f: impl FnOnce(&mut SweepRanks) -> R) -> Option<R> {
        let mut s = self.state();
        let r = f(s.sweeps.get_mut(&sweep)?);
        s.in_write.insert(sweep);
        Some(r)
    }
}

impl super::writer::Observer for Ranks {
    fn write_ended(&self, ok: bool) {
        let mut s = self.state();
        let touched = std::mem::take(&mut s.in_write);
        if ok {
            s.in_batch.extend(touched);
        } else {
            for sweep in touched {
                s.sweeps.remove(&sweep);
            }
        }
    }

    fn batch_ended(&self, committed: bool) {
        let mut s = self.state();
        let touched = std::mem::take(&mut s.in_batch);
        if !committed {
            for sweep in touched {
                s.sweeps.remove(&sweep);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The tree against a sorted list, through inserts, removals, ties and both signs of zero.
    #[test]
    fn the_tree_counts_and_selects_as_a_sorted_list_does() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (mut tree, mut list) = (Ranked::default(), Vec::<(f64, i64)>::new());
        for job in 0..3000i64 {
            let value = match rng.gen_range(0..4) {
                0 => f64::from(rng.gen_range(-3..3)), // ties
                1 => -0.0,
                _ => rng.gen::<f64>(),
            };
            tree.insert(value, job);
            list.push((value, job));
            if rng.gen_range(0..3) == 0 {
                let i = rng.gen_range(0..list.len());
                let (v, j) = list.swap_remove(i);
                assert!(tree.remove(v, j));
                assert!(!tree.remove(v, j), "gone already");
            }
            let probe = rng.gen_range(-3.0..3.0);
            for max in [true, false] {
                let want = list
                    .iter()
                    .filter(|(x, _)| if max { *x > probe } else { *x < probe })
                    .count();
                assert_eq!(tree.better_than(probe, max), want);
            }
            assert_eq!(tree.len(), list.len());
            let values: Vec<Option<f64>> = list.iter().map(|&(v, _)| Some(v)).collect();
            assert_eq!(
                tree.median().map(f64::to_bits),
                crate::sweep::early_stop::median(&values).map(f64::to_bits)
            );
        }
    }

    /// A write that fails drops the sweeps it touched (loaded or changed); a batch that does not
    /// commit drops every sweep its writes touched; the next decision loads them from SQLite.
    #[test]
    fn a_rolled_back_write_or_batch_drops_what_it_touched() {
        use crate::store::writer::Observer;
        let ranks = Ranks::default();
        let committed = |r: &Ranks| {
            r.write_ended(true);
            r.batch_ended(true);
        };
        ranks.load(1, SweepRanks::asha([(10, 0, 0.5)]));
        committed(&ranks);
        ranks.load(2, SweepRanks::asha([]));
        ranks.with(1, |s| s.add_rung_value(11, 0, 0.7));
        ranks.write_ended(false);
        assert!(!ranks.is_loaded(1) && !ranks.is_loaded(2));
        ranks.load(3, SweepRanks::asha([]));
        ranks.write_ended(true);
        ranks.load(4, SweepRanks::median(0, []));
        ranks.write_ended(true);
        ranks.batch_ended(false);
        assert!(!ranks.is_loaded(3) && !ranks.is_loaded(4));
        ranks.load(5, SweepRanks::asha([(10, 0, 0.5)]));
        committed(&ranks);
        ranks.with(5, |s| s.add_rung_value(11, 0, 0.7));
        committed(&ranks);
        assert_eq!(ranks.with(5, |s| s.rung_counts(0, 0.5, true)), Some((2, 1)));
        // A job that ends diverged leaves the rungs.
        ranks.with(5, |s| s.job_ended(11, protocol::JobStatus::Diverged));
        assert_eq!(ranks.with(5, |s| s.rung_counts(0, 0.5, true)), Some((1, 0)));
    }

    /// A finish that sends a job back to pending (a failed attempt with attempts left) keeps its
    /// values: when a later attempt completes, every epoch it recorded counts, as SQLite's metrics
    /// say.
    #[test]
    fn a_retried_job_keeps_its_values_until_it_ends() {
        use protocol::JobStatus;
        let mut s = SweepRanks::median(0, []);
        s.add_open_value(1, 1, 0.5);
        s.job_ended(1, JobStatus::Pending);
        s.add_open_value(1, 2, 0.7);
        s.job_ended(1, JobStatus::Completed);
        assert_eq!(s.median_at(1), (1, Some(0.5)));
        assert_eq!(s.median_at(2), (1, Some(0.7)));
    }
}
