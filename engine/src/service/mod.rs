//! One generation job and the service that runs them: [`pipeline`] (inputs → tokens → stems on
//! disk, behind the [`pipeline::SongModel`] seam), [`models`] (the real models behind that seam),
//! [`server`] (the JSON-lines engine service of `songgen serve`) and [`doctor`] (what the
//! machine can run).

pub mod doctor;
pub mod listen;
pub mod models;
pub mod pipeline;
pub mod server;
#[cfg(any(test, feature = "testing"))]
pub mod sine;
