//! `averager plan`: the all-reduce plan of one group, printed without running anything: who
//! reduces which span, the bytes each peer sends and receives, and the predicted time.

use std::process::ExitCode;

use averager::PeerMode;
use averager::plan::{AllReducePlan, GroupMember, TensorLayout};
use averager::{CompressionInfo, DType, Tensor};

use crate::Result;
use crate::backends;
use crate::cli::PlanArgs;
use crate::failure::Failure;

/// Plans one all-reduce of `--floats` f32 per peer among `--peers` peers and prints the plan.
///
/// # Errors
/// Bad flags: no peers, a bandwidth list of another length, an unknown codec, an impossible plan.
pub(crate) fn run(args: &PlanArgs) -> Result<ExitCode> {
    if args.peers == 0 {
        return Err(Failure::new("--peers must be at least 1"));
    }
    if !args.bandwidths.is_empty() && args.bandwidths.len() != args.peers {
        return Err(Failure::new(format!(
            "--bandwidths names {} peers, --peers says {}",
            args.bandwidths.len(),
            args.peers
        )));
    }
    let codec = backends::codec(&args.compression)?;
    // The codec's estimate depends on the tensor's size and dtype, not on its values.
    let descriptor = Tensor::zeros(vec![args.floats.min(1 << 20)], DType::F32)?;
    let ratio = codec.estimate_compression_ratio(&CompressionInfo::for_tensor(0, &descriptor.view()));
    let layouts = [TensorLayout { numel: args.floats, bytes_per_value: 4.0 * ratio }];
    let members: Vec<GroupMember> = (0..args.peers)
        .map(|i| GroupMember {
            endpoint: format!("peer{i}"),
            mode: PeerMode::Node,
            bandwidth: args.bandwidths.get(i).copied(),
        })
        .collect();
    let plan = AllReducePlan::new(&members, &layouts, args.part_size, args.min_vector_size)?;
    println!(
        "{} peers x {} f32 ({:.1} MB each), codec {} ({:.3} bytes per element), parts of {} bytes",
        args.peers,
        args.floats,
        args.floats as f64 * 4.0 / 1e6,
        args.compression,
        4.0 * ratio,
        args.part_size
    );
    println!("{plan}");
    Ok(ExitCode::SUCCESS)
}
