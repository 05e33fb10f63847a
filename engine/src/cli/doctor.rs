//! `songgen doctor`: is this model folder complete, and which devices can run it? With
//! `--plan`: the memory plan of a job, from the config and tensor shapes (no weights loaded).

use candle_core::{DType, Device};
use songgen_engine::paths::ModelPaths;
use songgen_engine::plan::{self, ModelShapes, Plan, PlanRequest, Preset, Residency};
use songgen_engine::quant::LmPrecision;
use songgen_engine::service::doctor;

use super::{CliResult, Failure, ModelArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print the memory plan of a job (per stage, and the whole job streaming and staged).
    #[arg(long)]
    pub plan: bool,
    /// Plan for a released model without its folder: v2-large or v2-medium.
    #[arg(long, value_name = "NAME", requires = "plan", conflicts_with = "model")]
    pub preset: Option<String>,
    /// LM weight precision to plan for.
    #[arg(long, value_name = "P", default_value = "q8_0", requires = "plan")]
    pub lm_precision: LmPrecision,
    /// Song length in seconds [default: the model's max_dur]
    #[arg(long, value_name = "S", requires = "plan", value_parser = super::device::positive_seconds)]
    pub seconds: Option<f64>,
    /// With a reference clip (the prompt encoders are loaded too).
    #[arg(long, requires = "plan")]
    pub prompt: bool,
    /// Plan for the CPU (host RAM; f32 LM activations) instead of a GPU (bf16 LM activations).
    #[arg(long, requires = "plan")]
    pub cpu: bool,
    /// Flow decoder dtype (the flow's error compounds over its Euler steps at reduced
    /// precision).
    #[arg(long, value_enum, default_value = "f32", requires = "plan")]
    pub render_dtype: super::device::DTypeChoice,
}

pub fn run(args: Args) -> CliResult {
    if args.plan {
        return run_plan(&args);
    }
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
        Ok(d) => match songgen_engine::gpu::info(&d) {
            Some(Ok(info)) => println!("  ok       cuda:0 {info}"),
            Some(Err(e)) => println!("  PROBLEM  cuda:0: cannot read its memory: {e}"),
            None => println!("  ok       cuda:0"),
        },
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

fn run_plan(args: &Args) -> CliResult {
    let (shapes, what) = match &args.preset {
        Some(p) => (
            Preset::parse(p).map_err(Failure::input)?.shapes(),
            p.to_string(),
        ),
        None => {
            let paths = ModelPaths::resolve(args.model.model_dir(), args.model.runtime.as_deref())
                .map_err(Failure::input)?;
            let shapes = ModelShapes::from_folder(&paths).map_err(Failure::input)?;
            (shapes, paths.model_dir.display().to_string())
        }
    };
    let render_dtype = match args.render_dtype {
        super::device::DTypeChoice::F16 => DType::F16,
        super::device::DTypeChoice::Bf16 => DType::BF16,
        _ => DType::F32,
    };
    let req = PlanRequest {
        precision: args.lm_precision,
        lm_dtype: if args.cpu { DType::F32 } else { DType::BF16 },
        render_dtype,
        seconds: args.seconds.unwrap_or(shapes.lm.max_dur),
        prompt: args.prompt,
        cpu: args.cpu,
    };
    let p = Plan::new(&shapes, req);
    print_plan(&what, &shapes, &p);
    let free = plan::free_memory(args.cpu).map_err(Failure::input)?;
    match free {
        Some(free) => match p.choose(free) {
            Some(mode) => println!("free {}: {mode} mode fits", plan::gb(free)),
            None => println!("free {}: neither mode fits", plan::gb(free)),
        },
        None => println!(
            "free memory: unknown on this device (set SONGGEN_DEVICE_MEMORY, e.g. 12G, to check a card)"
        ),
    }
    Ok(())
}

fn print_plan(what: &str, shapes: &ModelShapes, p: &Plan) {
    let r = &p.request;
    let act = r.precision.float_dtype().unwrap_or(r.lm_dtype);
    println!(
        "memory plan: {what}, lm {} (activations {act:?}), flow {:?}, {:.0} s ({} frames, {} KV positions), {}, {}",
        r.precision,
        r.render_dtype,
        p.frames as f64 / shapes.lm.frame_rate as f64,
        p.frames,
        p.positions,
        if r.prompt { "with a prompt clip" } else { "no prompt" },
        if r.cpu { "cpu" } else { "gpu" },
    );
    let stages = p.prompt.iter().chain([&p.lm, &p.render]);
    for s in stages {
        println!("  stage {:<8} {:>10}", s.name, plan::gb(s.total()));
        for (what, b) in &s.parts {
            println!("    {what:<28} {:>10}", plan::gb(*b));
        }
    }
    if p.host > 0 {
        println!(
            "  host memory (text conditioner tables) {:>10}",
            plan::gb(p.host)
        );
    }
    println!("whole job (device peak):");
    for mode in [Residency::Streaming, Residency::Staged] {
        println!("  {:<10} {:>10}", mode.to_string(), plan::gb(p.peak(mode)));
    }
}
