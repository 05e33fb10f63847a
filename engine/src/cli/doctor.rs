//! `songgen doctor`: is this model folder complete, and which devices can run it?

use candle_core::Device;
use songgen_engine::paths::ModelPaths;
use songgen_engine::service::doctor;

use super::{CliResult, Failure, ModelArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn run(args: Args) -> CliResult {
    let paths = ModelPaths::resolve(args.model.model_dir(), args.model.runtime.as_deref())
        .map_err(Failure::input)?;
    let report = doctor::check(&paths);
    print!("{report}");
    println!("devices:");
    println!(
        "  ok       cpu ({} threads)",
        candle_core::utils::get_num_threads()
    );
    match Device::new_cuda(0) {
        Ok(_) => println!("  ok       cuda:0"),
        Err(e) if cfg!(feature = "cuda") => println!("  PROBLEM  cuda:0: {e}"),
        Err(_) => {
            println!("  -        cuda: this build has no CUDA support (build with --features cuda)")
        }
    }
    if report.can_generate() {
        Ok(())
    } else {
        let problems: Vec<String> = report
            .problems()
            .filter(|p| p.need == doctor::Need::Always)
            .map(|p| format!("{} ({})", p.what, p.path.display()))
            .collect();
        Err(Failure::run(anyhow::anyhow!(
            "the model folder cannot generate: {}",
            problems.join(", ")
        )))
    }
}
