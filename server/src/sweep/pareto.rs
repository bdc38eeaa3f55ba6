//! Several objectives at once, on loss vectors (every objective minimised: a maximised metric is
//! negated by the caller): domination, constrained domination, non-domination ranks, crowding
//! distances, the front, hypervolume and the greedy hypervolume subset selection. These are the
//! building blocks of NSGA-II ([`super::nsga2`]), multi-objective TPE ([`super::tpe`]) and the
//! front the coordinator serves; each follows Optuna 5.0's definitions, tie orders included
//! (docs/search.md).
use std::cmp::Ordering;

/// Optuna's floor for a zero coordinate of the reference point.
const EPS: f64 = 1e-12;

/// `a` dominates `b`: no worse in any objective, and not the same point.
pub fn dominates(a: &[f64], b: &[f64]) -> bool {
    a != b && a.iter().zip(b).all(|(x, y)| x <= y)
}

/// Constrained domination (Deb's): a feasible point (violation 0) beats an infeasible one, two
/// infeasible ones compare by violation alone, two feasible ones by [`dominates`].
pub fn constrained_dominates(a: (&[f64], f64), b: (&[f64], f64)) -> bool {
    match (a.1 <= 0.0, b.1 <= 0.0) {
        (true, true) => dominates(a.0, b.0),
        (true, false) => true,
        (false, true) => false,
        (false, false) => a.1 < b.1,
    }
}

fn lex(a: &[f64], b: &[f64]) -> Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.total_cmp(y))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

/// The distinct points among `loss[idx]`, sorted lexicographically (each by the index of its
/// first occurrence in `loss`), and each position of `idx`'s index among them. Indices, never
/// copies: a front of 100,000 trials sorts 100,000 of them.
fn unique_sorted(loss: &[Vec<f64>], idx: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..idx.len()).collect();
    order.sort_by(|&a, &b| lex(&loss[idx[a]], &loss[idx[b]]));
    let mut unique: Vec<usize> = vec![];
    let mut inverse = vec![0; idx.len()];
    for k in order {
        let i = idx[k];
        if unique
            .last()
            .is_none_or(|&u| lex(&loss[u], &loss[i]).is_ne())
        {
            unique.push(i);
        }
        inverse[k] = unique.len() - 1;
    }
    (unique, inverse)
}

/// Which of `points` (distinct, lexicographically sorted) are on their non-dominated front.
fn front_of_sorted(points: &[&[f64]]) -> Vec<bool> {
    let n = points.len();
    let mut on = vec![false; n];
    if n == 0 {
        return on;
    }
    match points[0].len() {
        1 => on[0] = true,
        2 => {
            // Sorted by the first objective: on the front when the second reaches a new minimum.
            let mut best = f64::INFINITY;
            for (i, p) in points.iter().enumerate() {
                on[i] = i == 0 || p[1] < best;
                best = best.min(p[1]);
            }
        }
        _ => {
            // The first point left is on the front; drop every point it dominates, repeat.
            let mut left: Vec<usize> = (0..n).collect();
            while let Some(&top) = left.first() {
                on[top] = true;
                let t = &points[top][1..];
                left.retain(|&i| points[i][1..].iter().zip(t).any(|(x, y)| x < y));
            }
        }
    }
    on
}

/// The non-domination rank (0: the front) of each of `loss[idx]`, over distinct points; equal
/// points share a rank. Once `n_below` distinct points are ranked, every other point gets the
/// next rank (enough for a split at `n_below`; `None`: rank everything). One objective: the dense
/// rank of values.
fn nondomination_ranks(loss: &[Vec<f64>], idx: &[usize], n_below: Option<usize>) -> Vec<usize> {
    if idx.is_empty() || n_below == Some(0) {
        return vec![0; idx.len()];
    }
    let (unique, inverse) = unique_sorted(loss, idx);
    if loss[unique[0]].len() == 1 {
        return inverse;
    }
    let n_below = n_below.unwrap_or(unique.len()).min(unique.len());
    let mut ranks = vec![0; unique.len()];
    let mut left: Vec<usize> = (0..unique.len()).collect();
    let mut rank = 0;
    while unique.len() - left.len() < n_below {
        let points: Vec<&[f64]> = left.iter().map(|&u| loss[unique[u]].as_slice()).collect();
        let on = front_of_sorted(&points);
        let mut rest = vec![];
        for (k, &u) in left.iter().enumerate() {
            match on[k] {
                true => ranks[u] = rank,
                false => rest.push(u),
            }
        }
        left = rest;
        rank += 1;
    }
    for u in left {
        ranks[u] = rank;
    }
    inverse.into_iter().map(|u| ranks[u]).collect()
}

/// Optuna's `_fast_non_domination_rank`: with `violations`, feasible points (violation <= 0) rank
/// first by domination, then infeasible ones by violation alone, after every feasible rank.
/// `n_below` bounds the work as in [`nondomination_ranks`].
pub fn ranks(loss: &[Vec<f64>], violations: Option<&[f64]>, n_below: Option<usize>) -> Vec<usize> {
    let n_below = n_below.filter(|n| *n > 0).unwrap_or(loss.len());
    let all: Vec<usize> = (0..loss.len()).collect();
    let Some(violations) = violations else {
        return nondomination_ranks(loss, &all, Some(n_below));
    };
    let (feasible, infeasible): (Vec<usize>, Vec<usize>) =
        all.into_iter().partition(|&i| violations[i] <= 0.0);
    let mut out = vec![0; loss.len()];
    let feasible_ranks = nondomination_ranks(loss, &feasible, Some(n_below));
    let top = feasible_ranks.iter().max().map_or(0, |r| r + 1);
    for (&i, r) in feasible.iter().zip(&feasible_ranks) {
        out[i] = *r;
    }
    let left = n_below.saturating_sub(feasible.len());
    let by_violation: Vec<Vec<f64>> = infeasible.iter().map(|&i| vec![violations[i]]).collect();
    let positions: Vec<usize> = (0..infeasible.len()).collect();
    let infeasible_ranks = match left {
        0 => vec![0; infeasible.len()],
        n => nondomination_ranks(&by_violation, &positions, Some(n)),
    };
    for (&i, r) in infeasible.iter().zip(&infeasible_ranks) {
        out[i] = top + r;
    }
    out
}

/// Which points are on the front: every point no other point dominates (equal points both are).
pub fn front(loss: &[Vec<f64>]) -> Vec<bool> {
    let all: Vec<usize> = (0..loss.len()).collect();
    nondomination_ranks(loss, &all, Some(1))
        .into_iter()
        .map(|r| r == 0)
        .collect()
}

/// The order NSGA-II keeps members of one rank in: by crowding distance, largest first, with
/// Optuna's tie order (the list sorted in place by each objective in turn, then stably by
/// distance and reversed). `values` are the trials' values as reported (not negated): the
/// direction changes no distance, but it changes the order of ties.
pub fn crowding_order(values: &[Vec<f64>]) -> Vec<usize> {
    let distance = crowding_distances_in_order(values);
    let mut order = distance.0;
    let d = distance.1;
    order.sort_by(|&a, &b| d[a].total_cmp(&d[b]));
    order.reverse();
    order
}

/// Each point's crowding distance (the sum over objectives of the gap between its neighbours,
/// over the objective's range; the two ends infinite), and the order the objective sorts leave.
pub fn crowding_distances_in_order(values: &[Vec<f64>]) -> (Vec<usize>, Vec<f64>) {
    let n = values.len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut distance = vec![0.0; n];
    let Some(first) = values.first() else {
        return (order, distance);
    };
    // `m` indexes each point's objectives (clippy reads it as an index of `values`).
    #[allow(clippy::needless_range_loop)]
    for m in 0..first.len() {
        order.sort_by(|&a, &b| values[a][m].total_cmp(&values[b][m]));
        let (lo, hi) = (values[order[0]][m], values[order[n - 1]][m]);
        if lo == hi {
            continue;
        }
        let width = if hi - lo > 0.0 { hi - lo } else { 1.0 };
        let at = |k: isize| -> f64 {
            match k {
                k if k < 0 => f64::NEG_INFINITY,
                k if k as usize >= n => f64::INFINITY,
                k => values[order[k as usize]][m],
            }
        };
        for j in 0..n {
            let (before, after) = (at(j as isize - 1), at(j as isize + 1));
            let gap = if before == after { 0.0 } else { after - before };
            distance[order[j]] += gap / width;
        }
    }
    (order, distance)
}

/// The volume `points` dominate up to `reference` (every point no worse than it in every
/// objective). Exact: a sweep in two objectives, slices along the last objective above.
pub fn hypervolume(points: &[Vec<f64>], reference: &[f64]) -> f64 {
    let mut pts: Vec<&[f64]> = points.iter().map(|p| p.as_slice()).collect();
    hv(&mut pts, reference)
}

fn hv(points: &mut [&[f64]], reference: &[f64]) -> f64 {
    let d = reference.len();
    if points.is_empty() {
        return 0.0;
    }
    match d {
        1 => reference[0] - points.iter().map(|p| p[0]).fold(f64::INFINITY, f64::min),
        2 => {
            points.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
            let (mut area, mut y) = (0.0, reference[1]);
            for p in points.iter() {
                if p[1] < y {
                    area += (reference[0] - p[0]) * (y - p[1]);
                    y = p[1];
                }
            }
            area
        }
        _ => {
            points.sort_by(|a, b| a[d - 1].total_cmp(&b[d - 1]));
            let mut volume = 0.0;
            for i in 0..points.len() {
                let top = match points.get(i + 1) {
                    Some(p) => p[d - 1],
                    None => reference[d - 1],
                };
                let depth = top - points[i][d - 1];
                if depth > 0.0 {
                    let mut below: Vec<&[f64]> = points[..=i].iter().map(|p| &p[..d - 1]).collect();
                    volume += depth * hv(&mut below, &reference[..d - 1]);
                }
            }
            volume
        }
    }
}

/// Optuna's reference point for a tie-break: 1.1 times the worst value of each objective (0.9
/// times when negative), a zero replaced by a tiny positive number.
pub fn reference_point(loss: &[Vec<f64>]) -> Vec<f64> {
    (0..loss[0].len())
        .map(|m| {
            let worst = loss.iter().map(|p| p[m]).fold(f64::NEG_INFINITY, f64::max);
            let r = (1.1 * worst).max(0.9 * worst);
            if r == 0.0 {
                EPS
            } else {
                r
            }
        })
        .collect()
}

/// Optuna's hypervolume subset selection: `k` of `loss`'s points (indices, ascending) chosen
/// greedily, each step the point that adds the most hypervolume (the first of equals, in
/// lexicographic order), distinct points before repeats of one.
pub fn hssp(loss: &[Vec<f64>], k: usize, reference: &[f64]) -> Vec<usize> {
    let n = loss.len();
    if k >= n {
        return (0..n).collect();
    }
    let all: Vec<usize> = (0..n).collect();
    let (unique, inverse) = unique_sorted(loss, &all);
    // The first index of each distinct point.
    let mut first = vec![usize::MAX; unique.len()];
    for (i, &u) in inverse.iter().enumerate() {
        first[u] = first[u].min(i);
    }
    let unique: Vec<Vec<f64>> = unique.iter().map(|&i| loss[i].clone()).collect();
    let mut chosen: Vec<usize> = if unique.len() < k {
        let mut c = first.clone();
        let repeats = (0..n).filter(|i| !first.contains(i));
        c.extend(repeats.take(k - unique.len()));
        c
    } else if !reference.iter().all(|r| r.is_finite()) {
        first[..k].to_vec()
    } else {
        greedy_subset(&unique, k, reference)
            .into_iter()
            .map(|u| first[u])
            .collect()
    };
    chosen.sort_unstable();
    chosen
}

/// The greedy selection over distinct points: contributions only shrink as the set grows, so a
/// point whose last contribution is below the best found this step need not be recomputed.
fn greedy_subset(points: &[Vec<f64>], k: usize, reference: &[f64]) -> Vec<usize> {
    let alone = |p: &[f64]| -> f64 { p.iter().zip(reference).map(|(x, r)| r - x).product() };
    let mut bound: Vec<f64> = points.iter().map(|p| alone(p)).collect();
    let mut left: Vec<usize> = (0..points.len()).collect();
    let mut chosen: Vec<usize> = vec![];
    let mut selected: Vec<Vec<f64>> = vec![];
    for step in 0..k {
        if step > 0 {
            let mut by_bound = left.clone();
            by_bound.sort_by(|&a, &b| bound[b].total_cmp(&bound[a]));
            let mut best = f64::NEG_INFINITY;
            for i in by_bound {
                if bound[i] < best {
                    continue;
                }
                let clipped: Vec<Vec<f64>> = selected
                    .iter()
                    .map(|s| s.iter().zip(&points[i]).map(|(a, b)| a.max(*b)).collect())
                    .collect();
                bound[i] = alone(&points[i]) - hypervolume(&clipped, reference);
                best = best.max(bound[i]);
            }
        }
        // The first (lexicographic) of the largest.
        let at = (0..left.len())
            .reduce(|a, b| {
                if bound[left[b]] > bound[left[a]] {
                    b
                } else {
                    a
                }
            })
            .expect("k < number of points");
        let i = left.remove(at);
        chosen.push(i);
        selected.push(points[i].clone());
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domination_and_its_constrained_form() {
        assert!(dominates(&[1.0, 2.0], &[1.0, 3.0]));
        assert!(!dominates(&[1.0, 2.0], &[1.0, 2.0]));
        assert!(!dominates(&[1.0, 4.0], &[2.0, 3.0]));
        assert!(constrained_dominates((&[9.0], 0.0), (&[1.0], 0.5)));
        assert!(constrained_dominates((&[9.0], 0.1), (&[1.0], 0.5)));
        assert!(!constrained_dominates(
            (&[9.0], f64::INFINITY),
            (&[1.0], f64::INFINITY)
        ));
    }

    #[test]
    fn ranks_peel_fronts_and_put_infeasible_points_after() {
        let loss = vec![
            vec![1.0, 5.0],
            vec![2.0, 2.0],
            vec![3.0, 3.0],
            vec![5.0, 1.0],
            vec![2.0, 2.0],
            vec![4.0, 4.0],
        ];
        assert_eq!(ranks(&loss, None, None), vec![0, 0, 1, 0, 0, 2]);
        assert_eq!(front(&loss), vec![true, true, false, true, true, false]);
        let v = [0.0, 0.0, 2.0, 0.0, 1.0, f64::INFINITY];
        assert_eq!(ranks(&loss, Some(&v), None), vec![0, 0, 2, 0, 1, 3]);
    }

    #[test]
    fn hypervolume_of_known_sets() {
        let r = [4.0, 4.0];
        assert_eq!(
            hypervolume(&[vec![1.0, 3.0], vec![3.0, 1.0]], &r),
            3.0 + 3.0 - 1.0
        );
        let r3 = [2.0, 2.0, 2.0];
        let cube = hypervolume(&[vec![1.0, 1.0, 1.0]], &r3);
        assert_eq!(cube, 1.0);
        let two = hypervolume(&[vec![0.0, 1.0, 1.0], vec![1.0, 0.0, 1.0]], &r3);
        assert_eq!(two, 2.0 + 2.0 - 1.0);
        let r4 = [1.0; 4];
        assert_eq!(hypervolume(&[vec![0.0; 4], vec![0.5; 4]], &r4), 1.0);
    }

    #[test]
    fn crowding_puts_the_ends_first() {
        let v = vec![
            vec![0.0, 4.0],
            vec![1.0, 3.0],
            vec![3.0, 1.0],
            vec![4.0, 0.0],
        ];
        let (_, d) = crowding_distances_in_order(&v);
        assert!(d[0].is_infinite() && d[3].is_infinite());
        assert!((d[1] - (3.0 / 4.0 + 3.0 / 4.0)).abs() < 1e-12);
        let order = crowding_order(&v);
        assert_eq!(&order[2..], &[1, 2]);
    }
}
