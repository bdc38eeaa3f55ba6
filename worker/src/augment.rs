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
use crate::data::Split;
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
    Augmenter::new(device).normalize_u8(&images.to_device(device))
}

/// The augmentation's constants, on the device once per run: the mean, the standard deviation,
/// the luma weights and the pixel ramp were each a host-to-device copy (or a fill) per step.
#[derive(Debug)]
pub struct Augmenter {
    mean: Tensor,
    std: Tensor,
    /// Luma weights (ITU-R 601-2, as torchvision's rgb_to_grayscale): `[1, 3, 1, 1]`.
    gray: Tensor,
    /// 0..32 as i64: row and column indices.
    ramp: Tensor,
    /// [`SECTORS`] as a `[6, 3]` i64 tensor.
    sectors: Tensor,
}

impl Augmenter {
    pub fn new(device: Device) -> Self {
        Augmenter {
            mean: per_channel(MEAN, device),
            std: per_channel(STD, device),
            gray: Tensor::from_slice(&[0.2989f32, 0.587, 0.114])
                .view([1, 3, 1, 1])
                .to_device(device),
            ramp: Tensor::arange(32, (Kind::Int64, device)),
            sectors: Tensor::from_slice2(&SECTORS).to_device(device),
        }
    }

    /// u8 images `[B, 3, 32, 32]`, already on the device, to normalised floats.
    pub fn normalize_u8(&self, images: &Tensor) -> Tensor {
        (images.to_kind(Kind::Float) / 255.0 - &self.mean) / &self.std
    }

    /// Step `i` of `plan`: its images gathered from `split` (u8, the whole split) and augmented,
    /// and its labels. With the split on the plan's device: no host work, no copy, no sync.
    pub fn batch(&self, split: &Split, plan: &DevicePlan, i: usize) -> (Tensor, Tensor) {
        let (idx, p) = plan.step(i);
        let device = p.t.device();
        let (images, labels) = match split.images.device() == device {
            true => (
                split.images.index_select(0, &idx),
                split.labels.index_select(0, &idx),
            ),
            // A split too large for the device is gathered on the host and sent per step.
            false => {
                let idx = idx.to_device(split.images.device());
                (
                    split.images.index_select(0, &idx).to_device(device),
                    split.labels.index_select(0, &idx).to_device(device),
                )
            }
        };
        (self.apply(&images, &p), labels)
    }

    /// The study's train augmentation of u8 images on the device, one parameter row per image.
    fn apply(&self, images: &Tensor, p: &Params) -> Tensor {
        let x = images.to_kind(Kind::Float) / 255.0;
        let x = self.crop(&x, p);
        let flip = p.factor(2).gt(0.5);
        let x = x.flip([3]).where_self(&flip, &x);
        let x = self.jitter(&x, p);
        let x = (x - &self.mean) / &self.std;
        self.cut(&x, p)
    }
}

/// One batch's augmentation parameters as columns of a single `[B, COLUMNS, 1, 1]` float tensor
/// on the device (integers up to 32 are exact in f32): a per-image factor is one `narrow` away.
struct Params {
    t: Tensor,
    b: i64,
    /// Jitter slots some image of the batch uses, brightness then contrast: a slot nobody uses is
    /// skipped (the plan is on the host, so this costs no sync).
    used: Used,
}

type Used = [[bool; 2]; SLOTS];

/// Columns: crop y, crop x, flip, hue, Cutout y, Cutout x, then per jitter slot the brightness
/// factor, the contrast factor and one minus it (each 1, 1 and 0 for an image that does not apply
/// that op at that slot: the op is then exactly the identity on values in [0, 1]).
const FIXED: usize = 6;
const SLOTS: usize = 4;
const COLUMNS: usize = FIXED + 3 * SLOTS;

/// One image's parameter row; marks in `used` the slots it applies an op at.
fn columns(a: &SampleAug, used: &mut Used) -> [f32; COLUMNS] {
    let mut row = [0f32; COLUMNS];
    row[..FIXED].copy_from_slice(&[
        a.crop_y as f32,
        a.crop_x as f32,
        f32::from(u8::from(a.flip)),
        a.hue,
        a.cutout_y as f32,
        a.cutout_x as f32,
    ]);
    for (slot, op) in jitter_slots(a.order).into_iter().enumerate() {
        let (bright, contrast) = match op {
            Some(0) => (a.brightness, 1.0),
            Some(_) => (1.0, a.contrast),
            None => (1.0, 1.0),
        };
        if let Some(op) = op {
            used[slot][op as usize] = true;
        }
        // 1 - c on the host is the device's `-c + 1`: one correctly rounded f32 operation.
        let col = FIXED + 3 * slot;
        row[col..col + 3].copy_from_slice(&[bright, contrast, 1.0 - contrast]);
    }
    row
}

impl Params {
    fn new(aug: &[SampleAug], device: Device) -> Self {
        let mut used = [[false; 2]; SLOTS];
        let v: Vec<f32> = aug.iter().flat_map(|a| columns(a, &mut used)).collect();
        let b = aug.len() as i64;
        let t = Tensor::from_slice(&v)
            .view([b, COLUMNS as i64, 1, 1])
            .to_device(device);
        Params { t, b, used }
    }

    /// Column `i` as `[B, 1, 1, 1]` floats (per-image factors).
    fn factor(&self, i: usize) -> Tensor {
        self.t.narrow(1, i as i64, 1)
    }

    /// Columns `i` and `i + 1` as `[B, 2, 1]` integers (crop offsets, Cutout centres).
    fn pair(&self, i: usize) -> Tensor {
        self.t
            .narrow(1, i as i64, 2)
            .to_kind(Kind::Int64)
            .view([self.b, 2, 1])
    }
}

/// One epoch of one rank, on the device: the split indices of its positions `[P]` and their
/// parameter rows `[P, COLUMNS]`, two host-to-device copies per epoch instead of two per step; a
/// step narrows both (views, no copy).
#[derive(Debug)]
pub struct DevicePlan {
    order: Tensor,
    params: Tensor,
    batch: usize,
    len: usize,
    /// Per step, the jitter slots its batch uses (read on the host: a step needs no device read).
    used: Vec<Used>,
}

impl DevicePlan {
    /// `positions` of `plan` (a rank's share of the epoch's order, in the order it visits them),
    /// cut into batches of `batch`, the last one possibly shorter.
    pub fn new(plan: &EpochPlan, positions: &[usize], batch: usize, device: Device) -> Self {
        assert!(batch > 0, "a batch holds at least one image");
        let order: Vec<i64> = positions.iter().map(|&p| plan.order[p]).collect();
        let mut rows = Vec::with_capacity(positions.len() * COLUMNS);
        let used = positions
            .chunks(batch)
            .map(|chunk| {
                let mut used = [[false; 2]; SLOTS];
                for &p in chunk {
                    rows.extend(columns(&plan.aug[p], &mut used));
                }
                used
            })
            .collect();
        DevicePlan {
            order: Tensor::from_slice(&order).to_device(device),
            params: Tensor::from_slice(&rows)
                .view([positions.len() as i64, COLUMNS as i64])
                .to_device(device),
            batch,
            len: positions.len(),
            used,
        }
    }

    pub fn steps(&self) -> usize {
        self.used.len()
    }

    /// Images in step `i`'s batch.
    pub fn step_len(&self, i: usize) -> usize {
        self.batch.min(self.len - i * self.batch)
    }

    /// Step `i`'s split indices and parameters.
    fn step(&self, i: usize) -> (Tensor, Params) {
        let (start, b) = ((i * self.batch) as i64, self.step_len(i) as i64);
        let t = self
            .params
            .narrow(0, start, b)
            .view([b, COLUMNS as i64, 1, 1]);
        let p = Params {
            t,
            b,
            used: self.used[i],
        };
        (self.order.narrow(0, start, b), p)
    }
}

/// An image's jitter order as four slots around its single hue: the brightness (0) or contrast (1)
/// ops before hue (slots 0 and 1, in order, then none) and after it (slots 2 and 3).
fn jitter_slots(order: u8) -> [Option<u8>; SLOTS] {
    let ops = ORDERS[order as usize];
    let hue_at = ops
        .iter()
        .position(|&o| o == 2)
        .expect("hue is in every order");
    let mut slots = [None; SLOTS];
    for (i, &o) in ops[..hue_at].iter().enumerate() {
        slots[i] = Some(o);
    }
    for (i, &o) in ops[hue_at + 1..].iter().enumerate() {
        slots[2 + i] = Some(o);
    }
    slots
}

/// Augments u8 images `[B, 3, 32, 32]` with one parameter set per image; returns normalised floats.
/// (The trainer takes its batches through [`Augmenter::batch`]: the same maths.)
pub fn augment(images: &Tensor, aug: &[SampleAug], device: Device) -> Tensor {
    assert_eq!(
        images.size()[0],
        aug.len() as i64,
        "one augmentation per image"
    );
    Augmenter::new(device).apply(&images.to_device(device), &Params::new(aug, device))
}

/// Pads by 4 with zeros and takes the 32x32 window at each image's offset: two gathers, rows then columns.
pub fn random_crop(x: &Tensor, aug: &[SampleAug], device: Device) -> Tensor {
    Augmenter::new(device).crop(x, &Params::new(aug, device))
}

impl Augmenter {
    fn crop(&self, x: &Tensor, p: &Params) -> Tensor {
        let (b, c) = (x.size()[0], x.size()[1]);
        // Zero-padded to [B, C, 40, 40]; both offsets against 0..32 at once: [B, 2, 32] source
        // rows, then columns.
        let padded = x.constant_pad_nd([PAD, PAD, PAD, PAD]);
        let at = p.pair(0) + &self.ramp;
        let rows = at
            .narrow(1, 0, 1)
            .view([b, 1, 32, 1])
            .expand([b, c, 32, 40], false);
        let cols = at
            .narrow(1, 1, 1)
            .view([b, 1, 1, 32])
            .expand([b, c, 32, 32], false);
        padded.gather(2, &rows, false).gather(3, &cols, false)
    }
}

fn adjust_brightness(x: &Tensor, f: &Tensor) -> Tensor {
    (x * f).clamp(0.0, 1.0)
}

/// torchvision's adjust_contrast: a blend with the image's mean grey, `f` and `1 - f` given.
fn blend_with_mean(x: &Tensor, f: &Tensor, one_minus_f: &Tensor, gray: &Tensor) -> Tensor {
    // [B, 3, H, W] -> per-image mean of the [B, 1, H, W] grayscale.
    let mean = (x * gray)
        .sum_dim_intlist(&[1i64][..], true, Kind::Float)
        .mean_dim(&[1i64, 2, 3][..], true, Kind::Float);
    (x * f + mean * one_minus_f).clamp(0.0, 1.0)
}

/// The op alone (the trainer applies it through [`jitter`]'s slots).
#[cfg(test)]
fn adjust_contrast(x: &Tensor, f: &Tensor) -> Tensor {
    blend_with_mean(x, f, &(-f + 1.0), &Augmenter::new(x.device()).gray)
}

/// Shifts hue through HSV, with torchvision's `_rgb2hsv` / `_hsv2rgb` formulas.
pub fn adjust_hue(x: &Tensor, shift: &Tensor) -> Tensor {
    Augmenter::new(x.device()).hue(x, shift)
}

/// For each hue sector 0..6, which of (v, q, p, t) the red, green and blue channels take.
const SECTORS: [[i64; 3]; 6] = [
    [0, 3, 2],
    [1, 0, 2],
    [2, 0, 3],
    [2, 1, 0],
    [3, 2, 0],
    [0, 2, 1],
];

impl Augmenter {
    /// torchvision's arithmetic, value for value, in 51 ops instead of the 77 of its one-channel-
    /// at-a-time form (kept in the tests, which check every output bit): channel maxima and minima
    /// as reductions, the three channel ratios in one tensor, the hue's three cases as `where`s
    /// rather than masks multiplied and added (exactly one case holds and the others add +-0), `1 - a`
    /// as one `rsub` (the same correctly rounded result as `-a + 1`), and the sector's RGB taken
    /// from one stack of (v, q, p, t) through a table instead of three six-way stacks.
    fn hue(&self, x: &Tensor, shift: &Tensor) -> Tensor {
        let (b, h, w) = (x.size()[0], x.size()[2], x.size()[3]);
        let maxc = x.amax(&[1i64][..], false);
        let minc = x.amin(&[1i64][..], false);
        let eqc = maxc.eq_tensor(&minc);
        let cr = &maxc - &minc;
        let s = &cr / maxc.masked_fill(&eqc, 1.0);
        let cr_div = cr.masked_fill(&eqc, 1.0);
        let ratios = (maxc.unsqueeze(1) - x) / cr_div.unsqueeze(1);
        let (rc, gc, bc) = match &ratios.unbind(1)[..] {
            [r, g, b] => (r.shallow_clone(), g.shallow_clone(), b.shallow_clone()),
            _ => unreachable!("three channels"),
        };
        let channels = x.unbind(1);
        let is_r = maxc.eq_tensor(&channels[0]);
        let is_g = maxc.eq_tensor(&channels[1]);
        let hue = (&bc - &gc).where_self(
            &is_r,
            &((&rc - &bc) + 2.0).where_self(&is_g, &((&gc - &rc) + 4.0)),
        );
        let hue = (hue / 6.0 + 1.0).fmod(1.0);
        // shift is [B, 1, 1, 1]; hue, s, v are [B, H, W].
        let hue = (hue + shift.squeeze_dim(1)).remainder(1.0);
        let v = maxc;

        let h6 = &hue * 6.0;
        let i = h6.floor();
        let f = &h6 - &i;
        let i = i.to_kind(Kind::Int64).remainder(6);
        let p = (&v * s.rsub_scalar(1.0)).clamp(0.0, 1.0);
        let q = (&v * (&s * &f).rsub_scalar(1.0)).clamp(0.0, 1.0);
        let t = (&v * (&s * f.rsub_scalar(1.0)).rsub_scalar(1.0)).clamp(0.0, 1.0);
        let stacked = Tensor::stack(&[&v, &q, &p, &t], 1); // [B, 4, H, W]
        let pick = self
            .sectors
            .index_select(0, &i.view([-1]))
            .view([b, h, w, 3])
            .permute([0, 3, 1, 2]); // [B, 3, H, W]
        stacked.gather(1, &pick, false)
    }
}

/// Brightness, contrast and hue in each image's own random order. Every order is "some of
/// brightness/contrast, hue, the rest": two brightness/contrast slots, one hue for all, two more
/// slots. At a slot an image that does not apply an op gets factor 1 for it, which leaves values in
/// [0, 1] exactly as they are (`clamp(x * 1)`, `clamp(x * 1 + m * 0)`), so each image goes through
/// exactly its ops in its order: the three-step sequence's result, bit for bit, with hue (the costly
/// op) computed once instead of three times and no masks.
pub fn color_jitter(x: &Tensor, aug: &[SampleAug], device: Device) -> Tensor {
    Augmenter::new(device).jitter(x, &Params::new(aug, device))
}

/// Zeroes a 16x16 square centred at each image's (y, x), clipped at the borders (after normalisation).
pub fn cutout(x: &Tensor, aug: &[SampleAug], device: Device) -> Tensor {
    Augmenter::new(device).cut(x, &Params::new(aug, device))
}

impl Augmenter {
    fn jitter(&self, x: &Tensor, p: &Params) -> Tensor {
        let slot = |x: Tensor, s: usize| {
            let col = FIXED + 3 * s;
            let x = match p.used[s][0] {
                true => adjust_brightness(&x, &p.factor(col)),
                false => x,
            };
            match p.used[s][1] {
                true => blend_with_mean(&x, &p.factor(col + 1), &p.factor(col + 2), &self.gray),
                false => x,
            }
        };
        let x = slot(slot(x.shallow_clone(), 0), 1);
        let x = self.hue(&x, &p.factor(3));
        slot(slot(x, 2), 3)
    }

    fn cut(&self, x: &Tensor, p: &Params) -> Tensor {
        let b = p.b;
        let half = CUTOUT / 2;
        // Rows and columns inside each square at once: [B, 2, 32] distances to the centre (y, x).
        let d = &self.ramp - p.pair(4);
        let inside = d.ge(-half).logical_and(&d.lt(half));
        let rows = inside.narrow(1, 0, 1).view([b, 1, 32, 1]);
        let cols = inside.narrow(1, 1, 1).view([b, 1, 1, 32]);
        x.masked_fill(&rows.logical_and(&cols), 0.0) // the [B, 1, 32, 32] square
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hue shift as it was written before (one channel at a time, masks multiplied and
    /// added, three six-way stacks): [`Augmenter::hue`] must give its every bit.
    fn adjust_hue_before(x: &Tensor, shift: &Tensor) -> Tensor {
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

    #[test]
    fn the_lean_hue_shift_equals_the_one_it_replaced_bit_for_bit() {
        // Real images are u8 / 255, then brightness and contrast: quantised values, grays (r = g =
        // b), ties between the largest channels, black and white pixels, and continuous values.
        let q = Tensor::randint(256, [32, 3, 32, 32], (Kind::Int64, Device::Cpu))
            .to_kind(Kind::Float)
            / 255.0;
        let ties = Tensor::randint(4, [32, 3, 32, 32], (Kind::Int64, Device::Cpu))
            .to_kind(Kind::Float)
            / 3.0;
        let gray = q
            .narrow(1, 0, 1)
            .expand([32, 3, 32, 32], false)
            .contiguous();
        let cont = Tensor::rand([32, 3, 32, 32], (Kind::Float, Device::Cpu));
        let x = Tensor::cat(&[q, ties, gray, cont], 0);
        let mut shifts: Vec<f32> = (0..128).map(|i| (i as f32 / 127.0 - 0.5) * 0.2).collect();
        shifts[..4].copy_from_slice(&[0.0, -0.0, 0.5, -0.5]);
        let shift = Tensor::from_slice(&shifts).view([128, 1, 1, 1]);
        let augmenter = Augmenter::new(Device::Cpu);
        let (lean, before) = (augmenter.hue(&x, &shift), adjust_hue_before(&x, &shift));
        assert_eq!(lean.size(), before.size());
        assert!(
            lean.equal(&before),
            "max diff {}",
            (lean - before).abs().max()
        );
    }

    /// Each image alone, its three ops applied one after the other in its order: what the batched
    /// slots must equal exactly.
    fn one_by_one(x: &Tensor, aug: &[SampleAug]) -> Tensor {
        let images: Vec<Tensor> = aug
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let f = |v: f32| Tensor::from_slice(&[v]).view([1, 1, 1, 1]);
                let mut img = x.narrow(0, i as i64, 1);
                for op in ORDERS[a.order as usize] {
                    img = match op {
                        0 => adjust_brightness(&img, &f(a.brightness)),
                        1 => adjust_contrast(&img, &f(a.contrast)),
                        _ => adjust_hue(&img, &f(a.hue)),
                    };
                }
                img
            })
            .collect();
        Tensor::cat(&images, 0)
    }

    #[test]
    fn the_slots_apply_each_images_ops_in_its_order_bit_for_bit() {
        let plan = EpochPlan::new(7, 1, 48);
        // Near-white images so clipping bites and the order matters.
        let x = Tensor::rand([48, 3, 32, 32], (Kind::Float, Device::Cpu)) * 0.3 + 0.7;
        assert!(
            (0..6).all(|o| plan.aug.iter().any(|a| a.order == o)),
            "every order drawn"
        );
        let batched = color_jitter(&x, &plan.aug, Device::Cpu);
        let alone = one_by_one(&x, &plan.aug);
        assert!(
            batched.equal(&alone),
            "max diff {}",
            (batched - alone).abs().max()
        );
    }

    /// The trainer's path (the epoch's plan sent once, each step a slice of it, images gathered
    /// from the resident split) gives every step the batch that gathering and augmenting that
    /// step's samples gives, bit for bit: here for rank 1 of 2 with a short last batch.
    #[test]
    fn each_step_of_the_device_plan_is_its_samples_augmented() {
        let n = 40;
        let plan = EpochPlan::new(11, 3, n);
        let split = Split {
            images: Tensor::randint(256, [n as i64, 3, 32, 32], (Kind::Uint8, Device::Cpu)),
            labels: Tensor::arange(n as i64, (Kind::Int64, Device::Cpu)) * 7,
        };
        let positions: Vec<usize> = (1..n).step_by(2).collect();
        let device_plan = DevicePlan::new(&plan, &positions, 7, Device::Cpu);
        assert_eq!(device_plan.steps(), 3);
        assert_eq!(device_plan.step_len(2), 6);
        let augmenter = Augmenter::new(Device::Cpu);
        for (i, chunk) in positions.chunks(7).enumerate() {
            let order: Vec<i64> = chunk.iter().map(|&p| plan.order[p]).collect();
            let samples: Vec<SampleAug> = chunk.iter().map(|&p| plan.aug[p]).collect();
            let images = split.images.index_select(0, &Tensor::from_slice(&order));
            let want = augment(&images, &samples, Device::Cpu);
            let (x, y) = augmenter.batch(&split, &device_plan, i);
            assert!(x.equal(&want), "step {i}");
            let labels: Vec<i64> = order.iter().map(|o| o * 7).collect();
            assert_eq!(Vec::<i64>::try_from(&y).unwrap(), labels);
        }
    }

    #[test]
    fn slots_hold_the_ops_before_and_after_hue() {
        let (b, c) = (Some(0), Some(1));
        assert_eq!(jitter_slots(0), [b, c, None, None]); // brightness, contrast, hue
        assert_eq!(jitter_slots(1), [b, None, c, None]); // brightness, hue, contrast
        assert_eq!(jitter_slots(4), [None, None, b, c]); // hue, brightness, contrast
        assert_eq!(jitter_slots(5), [None, None, c, b]); // hue, contrast, brightness
    }

    #[test]
    fn a_batch_of_one_image_skips_the_slots_it_does_not_use() {
        for order in 0..6 {
            let plan = EpochPlan::new(3, u32::from(order), 1);
            let a = SampleAug {
                order,
                ..plan.aug[0]
            };
            let x = Tensor::rand([1, 3, 32, 32], (Kind::Float, Device::Cpu)) * 0.3 + 0.7;
            let used = Params::new(&[a], Device::Cpu).used;
            assert_eq!(
                used.iter().flatten().filter(|u| **u).count(),
                2,
                "two of eight"
            );
            assert!(color_jitter(&x, &[a], Device::Cpu).equal(&one_by_one(&x, &[a])));
        }
    }
}
