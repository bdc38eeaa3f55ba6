//! The lr staircase, the metrics and the augmentation, checked against values worked out by hand.
use tch::{Device, Kind, Tensor};
use worker::augment::{self, EpochPlan, SampleAug};
use worker::config::TrainConfig;
use worker::metrics::Confusion;
use worker::optim::LrSchedule;

/// The schedule `worker train` runs with its defaults, at a base lr.
fn default_schedule(base: f64) -> LrSchedule {
    let d = TrainConfig::default();
    LrSchedule {
        base,
        warmup_epochs: d.warmup_epochs,
        warmup_factor: d.warmup_factor,
        milestones: d.milestones.clone(),
        gamma: d.gamma,
    }
}

/// Asserts the staircase over 300 epochs: (first epoch, last epoch, factor of the base lr).
fn assert_staircase(s: &LrSchedule, steps: &[(u32, u32, f64)]) {
    for &(from, to, factor) in steps {
        for e in from..=to {
            let want = s.base * factor;
            assert!(
                (s.lr_at(e) - want).abs() <= 1e-12 * want,
                "epoch {e}: {} != {want}",
                s.lr_at(e)
            );
        }
    }
}

#[test]
fn lr_staircase_of_the_study_with_the_default_gamma() {
    let s = default_schedule(1e-2);
    assert_eq!(s.gamma, 0.1, "the study's step_factor=0.1 is the default");
    assert_staircase(
        &s,
        &[
            (1, 1, 0.01),
            (2, 60, 1.0),
            (61, 120, 0.1),
            (121, 200, 0.01),
            (201, 260, 1e-3),
            (261, 300, 1e-4),
        ],
    );
}

#[test]
fn lr_staircase_of_the_later_gamma_half() {
    let s = LrSchedule {
        gamma: 0.5,
        ..default_schedule(1e-2)
    };
    assert_staircase(
        &s,
        &[
            (1, 1, 0.01),
            (2, 60, 1.0),
            (61, 120, 0.5),
            (121, 200, 0.25),
            (201, 260, 0.125),
            (261, 300, 0.0625),
        ],
    );
}

#[test]
fn macro_metrics_match_a_hand_computed_confusion_matrix() {
    // truth 0 0 1 1 2 2, pred 0 1 1 1 0 0: class 2 is never predicted.
    let mut c = Confusion::new(10);
    c.add(&[0, 0, 1, 1, 2, 2], &[0, 1, 1, 1, 0, 0]);
    let s = c.scores();
    // Per class: precision 1/3, 2/3, 0 (zero_division=0); recall 1/2, 1, 0; F1 2/5, 4/5, 0.
    // Labels present in truth or predictions: 0, 1, 2 (not all ten).
    let eq = |a: f64, b: f64| (a - b).abs() < 1e-12;
    assert!(eq(s.accuracy, 0.5));
    assert!(
        eq(s.precision, (1.0 / 3.0 + 2.0 / 3.0) / 3.0),
        "{}",
        s.precision
    );
    assert!(eq(s.recall, 0.5), "{}", s.recall);
    assert!(eq(s.f1, (0.4 + 0.8) / 3.0), "{}", s.f1);

    // A label predicted but absent from the truth counts, with recall 0 (zero_division=0).
    let mut c = Confusion::new(10);
    c.add(&[0, 0, 0, 0], &[0, 0, 0, 3]);
    let s = c.scores();
    assert!(eq(s.precision, 0.5) && eq(s.recall, 0.75 / 2.0), "{s:?}");
    assert!(eq(s.f1, (2.0 * 0.75 / 1.75) / 2.0), "{s:?}");

    // On a balanced set, macro recall equals accuracy.
    let mut c = Confusion::new(10);
    let truth: Vec<i64> = (0..100).map(|i| i % 10).collect();
    let pred: Vec<i64> = truth
        .iter()
        .enumerate()
        .map(|(i, &t)| if i % 7 == 0 { (t + 1) % 10 } else { t })
        .collect();
    c.add(&truth, &pred);
    let s = c.scores();
    assert!(eq(s.recall, s.accuracy));
}

fn aug(crop_y: i64, crop_x: i64, flip: bool, cutout: (i64, i64)) -> SampleAug {
    SampleAug {
        crop_y,
        crop_x,
        flip,
        brightness: 1.0,
        contrast: 1.0,
        hue: 0.0,
        order: 0,
        cutout_y: cutout.0,
        cutout_x: cutout.1,
    }
}

#[test]
fn random_crop_moves_the_image_by_its_offset_and_pads_with_zeros() {
    // Pixel value = 1 + y * 32 + x, so every output pixel tells where it came from.
    let img = (Tensor::arange(1024, (Kind::Float, Device::Cpu)) + 1.0)
        .view([1, 1, 32, 32])
        .expand([1, 3, 32, 32], false);
    for (oy, ox) in [(0, 0), (8, 8), (4, 4), (0, 8), (3, 6)] {
        let out = augment::random_crop(
            &img.contiguous(),
            &[aug(oy, ox, false, (0, 0))],
            Device::Cpu,
        );
        assert_eq!(out.size(), [1, 3, 32, 32]);
        for y in 0..32i64 {
            for x in 0..32i64 {
                let (sy, sx) = (y + oy - 4, x + ox - 4);
                let want = if (0..32).contains(&sy) && (0..32).contains(&sx) {
                    (1 + sy * 32 + sx) as f64
                } else {
                    0.0
                };
                assert_eq!(
                    out.double_value(&[0, 2, y, x]),
                    want,
                    "offset ({oy},{ox}) at ({y},{x})"
                );
            }
        }
    }
}

#[test]
fn plans_are_deterministic_per_seed_and_epoch_and_stay_in_range() {
    let a = EpochPlan::new(5, 3, 4000);
    let b = EpochPlan::new(5, 3, 4000);
    assert_eq!(a.order, b.order);
    assert_eq!(a.aug, b.aug);
    assert_ne!(
        EpochPlan::new(5, 4, 4000).order,
        a.order,
        "another epoch, another order"
    );
    assert_ne!(
        EpochPlan::new(6, 3, 4000).aug,
        a.aug,
        "another seed, other parameters"
    );
    let mut sorted = a.order.clone();
    sorted.sort();
    assert_eq!(sorted, (0..4000).collect::<Vec<i64>>(), "a permutation");
    let offsets: std::collections::BTreeSet<i64> =
        a.aug.iter().flat_map(|s| [s.crop_y, s.crop_x]).collect();
    assert_eq!(
        offsets,
        (0..=8).collect(),
        "crop offsets cover exactly 0..=8"
    );
    assert!(a
        .aug
        .iter()
        .all(|s| (0.9..=1.1).contains(&s.brightness) && (0.9..=1.1).contains(&s.contrast)));
    assert!(a
        .aug
        .iter()
        .all(|s| (-0.1..=0.1).contains(&s.hue) && s.order < 6));
    assert!(a
        .aug
        .iter()
        .all(|s| (0..32).contains(&s.cutout_y) && (0..32).contains(&s.cutout_x)));
    let flips = a.aug.iter().filter(|s| s.flip).count();
    assert!((1800..2200).contains(&flips), "flip p=0.5: {flips}/4000");
}

#[test]
fn flip_mirrors_and_cutout_zeroes_a_clipped_16x16_square() {
    let img = Tensor::randint(256, [2, 3, 32, 32], (Kind::Uint8, Device::Cpu));
    // No flip/crop/jitter and a cutout in the corner: compare with plain normalisation.
    let plain = augment::normalize_u8(&img, Device::Cpu);
    let out = augment::augment(
        &img,
        &[aug(4, 4, false, (0, 0)), aug(4, 4, true, (16, 16))],
        Device::Cpu,
    );
    // Image 0: cutout centred at (0, 0) covers rows/cols 0..8 only (clipped): 8 x 8 zeros.
    let zero0 = out.get(0).eq(0.0).all_dim(0, false); // [32, 32] where all channels are 0
    assert_eq!(zero0.sum(Kind::Int64).int64_value(&[]), 64);
    assert_eq!(
        zero0
            .narrow(0, 0, 8)
            .narrow(1, 0, 8)
            .sum(Kind::Int64)
            .int64_value(&[]),
        64
    );
    let keep = zero0.logical_not().unsqueeze(0);
    let diff = (out.get(0) - plain.get(0))
        .abs()
        .masked_select(&keep)
        .max()
        .double_value(&[]);
    assert!(
        diff < 1e-5,
        "outside the cutout image 0 is unchanged: {diff}"
    );
    // Image 1: flipped, cutout centred at (16, 16) covers rows/cols 8..24: 16 x 16 zeros.
    let zero1 = out.get(1).eq(0.0).all_dim(0, false);
    assert_eq!(zero1.sum(Kind::Int64).int64_value(&[]), 256);
    assert_eq!(
        zero1
            .narrow(0, 8, 16)
            .narrow(1, 8, 16)
            .sum(Kind::Int64)
            .int64_value(&[]),
        256
    );
    let flipped = plain.get(1).flip([2]);
    let keep = zero1.logical_not().unsqueeze(0);
    let diff = (out.get(1) - flipped)
        .abs()
        .masked_select(&keep)
        .max()
        .double_value(&[]);
    assert!(diff < 1e-5, "image 1 is mirrored: {diff}");
}

#[test]
fn colour_jitter_identity_and_a_known_hue_shift() {
    let img = Tensor::rand([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let samples: Vec<SampleAug> = (0..4)
        .map(|i| SampleAug {
            order: i as u8,
            ..aug(4, 4, false, (0, 0))
        })
        .collect();
    let same = augment::color_jitter(&img, &samples, Device::Cpu);
    let diff = (&same - &img).abs().max().double_value(&[]);
    assert!(
        diff < 1e-5,
        "factors 1 and hue 0 leave images unchanged: {diff}"
    );

    // Pure red shifted by a third of the hue circle is pure green.
    let red = Tensor::from_slice(&[1.0f32, 0.0, 0.0])
        .view([1, 3, 1, 1])
        .expand([1, 3, 2, 2], false)
        .contiguous();
    let green = augment::adjust_hue(
        &red,
        &Tensor::from_slice(&[1.0f32 / 3.0]).view([1, 1, 1, 1]),
    );
    let want = Tensor::from_slice(&[0.0f32, 1.0, 0.0]).view([1, 3, 1, 1]);
    assert!((green - want).abs().max().double_value(&[]) < 1e-5);

    // Brightness 1.1 then contrast 0.9 differs from contrast then brightness when clipping bites:
    // the order is honoured per image.
    let bright = SampleAug {
        brightness: 1.1,
        contrast: 0.9,
        ..aug(4, 4, false, (0, 0))
    };
    let img = Tensor::rand([1, 3, 32, 32], (Kind::Float, Device::Cpu)) * 0.2 + 0.8;
    let bc = augment::color_jitter(&img, &[SampleAug { order: 0, ..bright }], Device::Cpu);
    let cb = augment::color_jitter(&img, &[SampleAug { order: 2, ..bright }], Device::Cpu);
    assert!((bc - cb).abs().max().double_value(&[]) > 1e-3);
}
