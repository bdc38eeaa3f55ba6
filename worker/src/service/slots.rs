//! What this machine can take: devices (GPUs, or CPU rank slots), each shared by up to K small jobs.
//!
//! The packing rule: a job whose per-process batch size is at most `pack_max_batch` is *packable* and
//! may share a device with other packable jobs, up to `slots_per_device` of them (batch 1 to 16 of the
//! study's network leaves an H100 mostly idle). A larger job takes its devices whole. CPU threads are
//! split so that jobs sharing the machine never ask for more threads than it has cores.

#[derive(Debug, Clone, PartialEq)]
pub enum DeviceKind {
    Gpu(usize),
    /// One CPU rank slot (a share of the cores).
    Cpu(usize),
}

#[derive(Debug, Clone)]
struct Device {
    kind: DeviceKind,
    /// (job id, exclusive)
    jobs: Vec<(i64, bool)>,
}

#[derive(Debug, Clone)]
pub struct Slots {
    devices: Vec<Device>,
    pub slots_per_device: usize,
    pub pack_max_batch: i64,
    cores: usize,
}

/// Where a claimed job runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub devices: Vec<DeviceKind>,
    /// Intra-op threads for each of the job's processes.
    pub threads: usize,
}

/// As the worker's log writes it: `gpu 0,1 (4 threads each)`, `cpu slot 0 (2 threads)`.
impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (gpus, cpus): (Vec<_>, Vec<_>) = self
            .devices
            .iter()
            .partition(|d| matches!(d, DeviceKind::Gpu(_)));
        let list = |ds: Vec<&DeviceKind>| {
            ds.iter()
                .map(|d| match d {
                    DeviceKind::Gpu(i) | DeviceKind::Cpu(i) => i.to_string(),
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let (what, slots) = match gpus.is_empty() {
            true => ("cpu slot", list(cpus)),
            false => ("gpu", list(gpus)),
        };
        let each = if self.devices.len() > 1 { " each" } else { "" };
        let threads = match self.threads {
            1 => "1 thread".to_string(),
            n => format!("{n} threads"),
        };
        write!(f, "{what} {slots} ({threads}{each})")
    }
}

/// One claim to try: the capacity to advertise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ask {
    pub ranks: usize,
    pub max_batch_size: Option<i64>,
}

impl Slots {
    pub fn new(
        kinds: Vec<DeviceKind>,
        slots_per_device: usize,
        pack_max_batch: i64,
        cores: usize,
    ) -> Self {
        Slots {
            devices: kinds
                .into_iter()
                .map(|kind| Device { kind, jobs: vec![] })
                .collect(),
            slots_per_device: slots_per_device.max(1),
            pack_max_batch,
            cores: cores.max(1),
        }
    }

    fn free(&self) -> impl Iterator<Item = &Device> {
        self.devices.iter().filter(|d| d.jobs.is_empty())
    }

    fn shareable(&self) -> impl Iterator<Item = &Device> {
        self.devices.iter().filter(|d| {
            d.jobs.len() < self.slots_per_device && d.jobs.iter().all(|(_, excl)| !excl)
        })
    }

    /// Claims to try, most specific first: small jobs into shared slots, then anything on free devices.
    pub fn asks(&self) -> Vec<Ask> {
        let mut asks = vec![];
        if self.slots_per_device > 1 {
            let n = self.shareable().count();
            if n > 0 {
                asks.push(Ask {
                    ranks: n,
                    max_batch_size: Some(self.pack_max_batch),
                });
            }
        }
        let free = self.free().count();
        if free > 0
            && !asks
                .iter()
                .any(|a| a.ranks == free && a.max_batch_size.is_none())
        {
            asks.push(Ask {
                ranks: free,
                max_batch_size: None,
            });
        }
        asks
    }

    /// Takes devices for a job of `nproc` processes and per-process `batch_size`; None if it does not fit.
    pub fn place(&mut self, job: i64, nproc: usize, batch_size: i64) -> Option<Placement> {
        let packable = self.slots_per_device > 1 && batch_size <= self.pack_max_batch;
        let mut chosen: Vec<usize> = if packable {
            // Fill devices that already hold packed jobs before opening a free one.
            let mut idx: Vec<usize> = (0..self.devices.len())
                .filter(|&i| {
                    let d = &self.devices[i];
                    d.jobs.len() < self.slots_per_device && d.jobs.iter().all(|(_, excl)| !excl)
                })
                .collect();
            idx.sort_by_key(|&i| std::cmp::Reverse(self.devices[i].jobs.len()));
            idx
        } else {
            (0..self.devices.len())
                .filter(|&i| self.devices[i].jobs.is_empty())
                .collect()
        };
        if chosen.len() < nproc {
            return None;
        }
        chosen.truncate(nproc);
        for &i in &chosen {
            self.devices[i].jobs.push((job, !packable));
        }
        let share = if packable { self.slots_per_device } else { 1 };
        let threads = (self.cores / (self.devices.len() * share)).max(1);
        Some(Placement {
            devices: chosen
                .iter()
                .map(|&i| self.devices[i].kind.clone())
                .collect(),
            threads,
        })
    }

    pub fn release(&mut self, job: i64) {
        for d in &mut self.devices {
            d.jobs.retain(|(j, _)| *j != job);
        }
    }

    pub fn busy(&self) -> bool {
        self.devices.iter().any(|d| !d.jobs.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_jobs_pack_and_large_ones_take_whole_devices() {
        let mut s = Slots::new(vec![DeviceKind::Gpu(0), DeviceKind::Gpu(1)], 3, 16, 16);
        assert_eq!(
            s.asks(),
            vec![
                Ask {
                    ranks: 2,
                    max_batch_size: Some(16)
                },
                Ask {
                    ranks: 2,
                    max_batch_size: None
                }
            ]
        );
        let a = s.place(1, 1, 8).unwrap();
        let b = s.place(2, 1, 4).unwrap();
        assert_eq!(a.devices, b.devices, "the second small job joins the first");
        assert_eq!(a.threads, 16 / (2 * 3));
        let big = s.place(3, 1, 512).unwrap();
        assert_ne!(big.devices, a.devices, "a large job takes the free device");
        assert_eq!(big.threads, 16 / 2);
        assert!(s.place(4, 1, 512).is_none(), "no free device left");
        assert!(s.place(5, 1, 8).is_some(), "one shared slot left");
        assert!(s.place(6, 1, 8).is_none(), "shared device full");
        s.release(3);
        assert!(
            s.place(7, 2, 1024).is_none(),
            "two devices needed, one free"
        );
        assert!(s.place(8, 1, 1024).is_some());
    }

    #[test]
    fn cpu_threads_never_exceed_the_cores() {
        let mut s = Slots::new(vec![DeviceKind::Cpu(0)], 2, 64, 2);
        let a = s.place(1, 1, 32).unwrap();
        let b = s.place(2, 1, 32).unwrap();
        assert_eq!(a.threads + b.threads, 2);
        assert!(s.place(3, 1, 32).is_none());
        let mut one = Slots::new(vec![DeviceKind::Cpu(0), DeviceKind::Cpu(1)], 1, 64, 2);
        assert_eq!(
            one.asks(),
            vec![Ask {
                ranks: 2,
                max_batch_size: None
            }]
        );
        let p = one.place(1, 2, 32).unwrap();
        assert_eq!(p.devices.len(), 2);
        assert_eq!(p.threads, 1);
    }
}
