//! What a sweep's results become: the study's table and our comparison with it, CSV/JSON exports,
//! the README block and the figures.
pub mod export;
pub mod figures;
pub mod importance;
pub mod study;
