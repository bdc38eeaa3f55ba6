//! The study's train augmentation, applied to whole batches on the training device.
//!
//! Randomness comes from an [`EpochPlan`]: a ChaCha stream seeded by (seed, epoch) that draws the
//! epoch's sample order and every sample's augmentation parameters up front. Nothing depends on what
//! ran before, so a resumed run replays an epoch exactly, and parameters belong to a *position* in the
//! epoch's order, so data-parallel ranks that split positions see what one process would have seen.
//!
//! Order (torchvision's, as the seed composed it): zero-padded random crop (offsets 0..=8), horizontal
//! flip p=0.5, colour jitter (brightness, contrast, hue in random order), normalise, Cutout 16x16.
//! The seed jittered PIL images, which round to 8 bits after each op; here the ops run on floats in
//! [0, 1] with torchvision's tensor formulas (the same maths without the intermediate rounding).
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

pub const MEAN: [f64; 3] = [0.4914, 0.4822, 0.4465];
pub const STD: [f64; 3] = [0.2023, 0.1994, 0.2010];
pub const PAD: i64 = 4;
pub const CUTOUT: i64 = 16;
/// The six orders of (brightness, contrast, hue).
const ORDERS: [[u8; 3]; 6] = [
    [0, 1, 2],
    [0, 2, 1],
    [1, 0, 2],
    [1, 2, 0],
    [2, 0, 1],
    [2, 1, 0],
];

/// One sample's draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleAug {
    pub crop_y: i64,
    pub crop_x: i64,
    pub flip: bool,
    pub brightness: f32,
    pub contrast: f32,
    pub hue: f32,
    /// Index into the six orders of the three jitter ops.
    pub order: u8,
    pub cutout_y: i64,
    pub cutout_x: i64,
}

/// The sample order and augmentation parameters of one epoch.
#[derive(Debug, Clone)]
pub struct EpochPlan {
    pub order: Vec<i64>,
    pub aug: Vec<SampleAug>,
}

fn epoch_rng(seed: u64, epoch: u32) -> ChaCha8Rng {
    // Distinct streams per epoch from one seed; ChaCha's stream id keeps them independent.
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch as u64 + 1);
    rng
}

impl EpochPlan {
    pub fn new(seed: u64, epoch: u32, n: usize) -> Self {
        let mut rng = epoch_rng(seed, epoch);
        let mut order: Vec<i64> = (0..n as i64).collect();
        order.shuffle(&mut rng);
        let aug = (0..n)
            .map(|_| SampleAug {
                crop_y: rng.gen_range(0..=2 * PAD),
                crop_x: rng.gen_range(0..=2 * PAD),
                flip: rng.gen_bool(0.5),
                brightness: rng.gen_range(0.9..=1.1),
                contrast: rng.gen_range(0.9..=1.1),
                hue: rng.gen_range(-0.1..=0.1),
                order: rng.gen_range(0..6),
                cutout_y: rng.gen_range(0..32),
                cutout_x: rng.gen_range(0..32),
            })
            .collect();
        EpochPlan { order, aug }
    }
}

/// `[3]` constants as a `[1, 3, 1, 1]` tensor.
fn per_channel(v: [f64; 3], device: Device) -> Tensor {
    Tensor::from_slice(&v.map(|x| x as f32))
        .view([1, 3, 1, 1])
        .to_device(device)
}

/// u8 images `[B, 3, 32, 32]` to normalised floats, for evaluation.
pub fn normalize_u8(images: &Tensor, device: Device) -> Tensor {
    let x = images.to_device(device).to_kind(Kind::Float) / 255.0;
    (x - per_channel(MEAN, device)) / per_channel(STD, device)
}

fn column<T: Copy>(aug: &[SampleAug], f: impl Fn(&SampleAug) -> T) -> Vec<T> {
    aug.iter().map(f).collect()
}

/// `[B]` floats as `[B, 1, 1, 1]` on `device`.
fn per_sample(v: Vec<f32>, device: Device) -> Tensor {
    let n = v.len() as i64;
    Tensor::from_slice(&v).view([n, 1, 1, 1]).to_device(device)
}

/// Augments u8 images `[B, 3, 32, 32]` with one parameter set per image; returns normalised floats.
pub fn augment(images: &Tensor, aug: &[SampleAug], device: Device) -> Tensor {
    let b = aug.len() as i64;
    assert_eq!(images.size()[0], b, "one augmentation per image");
    let x = images.to_device(device).to_kind(Kind::Float) / 255.0;
    let x = random_crop(&x, aug, device);
    let flip = Tensor::from_slice(&column(aug, |a| a.flip))
        .view([b, 1, 1, 1])
        .to_device(device);
    let x = x.flip([3]).where_self(&flip, &x);
    let x = color_jitter(&x, aug, device);
    let x = (x - per_channel(MEAN, device)) / per_channel(STD, device);
    cutout(&x, aug, device)
}

/// Pads by 4 with zeros and takes the 32x32 window at each image's offset: two gathers, rows then columns.
pub fn random_crop(x: &Tensor, aug: &[SampleAug], device: Device) -> Tensor {
    let (b, c) = (x.size()[0], x.size()[1]);
    let padded = x.constant_pad_nd([PAD, PAD, PAD, PAD]); // [B, C, 40, 40]
    let ar = Tensor::arange(32, (Kind::Int64, device));
    let oy = Tensor::from_slice(&column(aug, |a| a.crop_y))
        .to_device(device)
        .view([b, 1]);
    let ox = Tensor::from_slice(&column(aug, |a| a.crop_x))
        .to_device(device)
        .view([b, 1]);
    let rows = (&ar + oy).view([b, 1, 32, 1]).expand([b, c, 32, 40], false);
    let cols = (&ar + ox).view([b, 1, 1, 32]).expand([b, c, 32, 32], false);
    padded.gather(2, &rows, false).gather(3, &cols, false)
}

fn grayscale(x: &Tensor) -> Tensor {
    // ITU-R 601-2 luma, as torchvision's rgb_to_grayscale: [B, 3, H, W] -> [B, 1, H, W].
    let w = Tensor::from_slice(&[0.2989f32, 0.587, 0.114])
        .view([1, 3, 1, 1])
        .to_device(x.device());
    (x * w).sum_dim_intlist(&[1i64][..], true, Kind::Float)
}

fn adjust_brightness(x: &Tensor, f: &Tensor) -> Tensor {
    (x * f).clamp(0.0, 1.0)
}

fn adjust_contrast(x: &Tensor, f: &Tensor) -> Tensor {
    let mean = grayscale(x).mean_dim(&[1i64, 2, 3][..], true, Kind::Float);
    (x * f + mean * (-f + 1.0)).clamp(0.0, 1.0)
}

/// Shifts hue through HSV, with torchvision's `_rgb2hsv` / `_hsv2rgb` formulas.
pub fn adjust_hue(x: &Tensor, shift: &Tensor) -> Tensor {
    let (r, g, bl) = (x.select(1, 0), x.select(1, 1), x.select(1, 2));
    let maxc = r.maximum(&g).maximum(&bl);
    let minc = r.minimum(&g).minimum(&bl);
    let eqc = maxc.eq_tensor(&minc);
    let cr = &maxc - &minc;
    let ones = maxc.ones_like();
    let s = &cr / ones.where_self(&eqc, &maxc);
    let cr_div = ones.where_self(&eqc, &cr);
    let rc = (&maxc - &r) / &cr_div;
    let gc = (&maxc - &g) / &cr_div;
    let bc = (&maxc - &bl) / &cr_div;
    let is_r = maxc.eq_tensor(&r);
    let is_g = maxc.eq_tensor(&g).logical_and(&is_r.logical_not());
    let is_b = is_r.logical_or(&is_g).logical_not();
    let hr = is_r.to_kind(Kind::Float) * (&bc - &gc);
    let hg = is_g.to_kind(Kind::Float) * ((&rc - &bc) + 2.0);
    let hb = is_b.to_kind(Kind::Float) * ((&gc - &rc) + 4.0);
    let h = ((hr + hg + hb) / 6.0 + 1.0).fmod(1.0);
    // shift is [B, 1, 1, 1]; h, s, v are [B, H, W].
    let h = (h + shift.squeeze_dim(1)).remainder(1.0);
    let v = maxc;

    let h6 = &h * 6.0;
    let i = h6.floor();
    let f = &h6 - &i;
    let i = i.to_kind(Kind::Int64).remainder(6);
    let p = (&v * (-&s + 1.0)).clamp(0.0, 1.0);
    let q = (&v * (-(&s * &f) + 1.0)).clamp(0.0, 1.0);
    let t = (&v * (-(&s * (-&f + 1.0)) + 1.0)).clamp(0.0, 1.0);
    // For sector i, (R, G, B) = (a1[i], a2[i], a3[i]).
    let pick = |vals: [&Tensor; 6]| {
        let stacked = Tensor::stack(&vals, 1); // [B, 6, H, W]
        stacked.gather(1, &i.unsqueeze(1), false) // [B, 1, H, W]
    };
    let red = pick([&v, &q, &p, &p, &t, &v]);
    let green = pick([&t, &v, &v, &q, &p, &p]);
    let blue = pick([&p, &p, &t, &v, &v, &q]);
    Tensor::cat(&[red, green, blue], 1)
}

/// Brightness, contrast and hue in each image's own random order. Each of the three steps computes
/// the op an image needs at that step by masking; all three ops are cheap next to the network.
pub fn color_jitter(x: &Tensor, aug: &[SampleAug], device: Device) -> Tensor {
    let b = aug.len() as i64;
    let bright = per_sample(column(aug, |a| a.brightness), device);
    let contrast = per_sample(column(aug, |a| a.contrast), device);
    let hue = per_sample(column(aug, |a| a.hue), device);
    // ops_at_step[s][i]: the op image i applies at step s.
    let ops_at_step: [Vec<u8>; 3] =
        std::array::from_fn(|s| aug.iter().map(|a| ORDERS[a.order as usize][s]).collect());
    let mut x = x.shallow_clone();
    for ops in &ops_at_step {
        let op_at = |op: u8| {
            let m: Vec<bool> = ops.iter().map(|&o| o == op).collect();
            Tensor::from_slice(&m).view([b, 1, 1, 1]).to_device(device)
        };
        let mut next = adjust_brightness(&x, &bright).where_self(&op_at(0), &x);
        next = adjust_contrast(&x, &contrast).where_self(&op_at(1), &next);
        next = adjust_hue(&x, &hue).where_self(&op_at(2), &next);
        x = next;
    }
    x
}

/// Zeroes a 16x16 square centred at each image's (y, x), clipped at the borders (after normalisation).
pub fn cutout(x: &Tensor, aug: &[SampleAug], device: Device) -> Tensor {
    let b = aug.len() as i64;
    let ar = Tensor::arange(32, (Kind::Int64, device)).view([1, 32]);
    let cy = Tensor::from_slice(&column(aug, |a| a.cutout_y))
        .to_device(device)
        .view([b, 1]);
    let cx = Tensor::from_slice(&column(aug, |a| a.cutout_x))
        .to_device(device)
        .view([b, 1]);
    let half = CUTOUT / 2;
    let in_rows = ar
        .ge_tensor(&(&cy - half))
        .logical_and(&ar.lt_tensor(&(&cy + half))); // [B, 32]
    let in_cols = ar
        .ge_tensor(&(&cx - half))
        .logical_and(&ar.lt_tensor(&(&cx + half)));
    let mask = in_rows
        .view([b, 1, 32, 1])
        .logical_and(&in_cols.view([b, 1, 1, 32])); // [B, 1, 32, 32]
    x.masked_fill(&mask, 0.0)
}
