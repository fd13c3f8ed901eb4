// moex: one binary, one subcommand per job.
#include <iostream>

#include "CLI/CLI.hpp"
#include "moex/cli/bench_command.h"
#include "moex/cli/checkpoint_command.h"
#include "moex/cli/control_commands.h"
#include "moex/cli/placement_command.h"
#include "moex/cli/plan_command.h"
#include "moex/cli/run_command.h"
#include "moex/core/build_info.h"
#include "moex/core/provenance.h"

int main(int argc, char** argv) {
  moex::RecordCommandLine(argc, argv);  // for every JSON result's provenance
  CLI::App app{"moex: an expert-parallel runtime for Mixture-of-Experts models"};
  app.set_version_flag("--version", moex::BuildDescription());
  app.require_subcommand(1);
  moex::cli::PlanFlags plan_flags;
  CLI::App* plan = moex::cli::AddPlanCommand(app, plan_flags);
  moex::cli::RunFlags run_flags;
  CLI::App* run = moex::cli::AddRunCommand(app, run_flags);
  CLI::App* worker = moex::cli::AddWorkerCommand(app, run_flags);
  moex::cli::ServeFlags serve_flags;
  CLI::App* serve = moex::cli::AddServeCommand(app, serve_flags);
  moex::cli::JobFlags job_flags;
  CLI::App* job = moex::cli::AddJobCommand(app, job_flags);
  moex::cli::PlacementFlags placement_flags;
  CLI::App* placement = moex::cli::AddPlacementCommand(app, placement_flags);
  moex::cli::BenchFlags bench_flags;
  CLI::App* bench = moex::cli::AddBenchCommand(app, bench_flags);
  moex::cli::CheckpointFlags checkpoint_flags;
  CLI::App* checkpoint = moex::cli::AddCheckpointCommand(app, checkpoint_flags);
  CLI11_PARSE(app, argc, argv);
  if (plan->parsed()) return moex::cli::RunPlan(plan_flags, std::cout, std::cerr);
  if (run->parsed()) return moex::cli::RunRun(run_flags, &argc, &argv);
  if (worker->parsed()) return moex::cli::RunWorker(run_flags, &argc, &argv);
  if (serve->parsed()) return moex::cli::RunServe(serve_flags);
  if (job->parsed()) return moex::cli::RunJob(*job, job_flags);
  if (bench->parsed()) return moex::cli::RunBench(*bench, bench_flags, &argc, &argv);
  if (placement->parsed()) return moex::cli::RunPlacement(placement_flags, std::cout, std::cerr);
  if (checkpoint->parsed()) return moex::cli::RunCheckpoint(checkpoint_flags, std::cout, std::cerr);
  return 0;
}
