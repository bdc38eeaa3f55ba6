//! What a sweep's results become: its own shape (axes, metrics), the study's table and our
//! comparison with it, the table of any other sweep, CSV/JSON exports, the README block, the
//! figures and the analysis views.
pub mod export;
pub mod figures;
pub mod front;
pub mod importance;
pub mod shape;
pub mod study;
pub mod table;
pub mod views;
