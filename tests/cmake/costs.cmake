# How long the slow tests take (seconds, the ci build on 2 cores, 2026-12-02,
# `ctest --preset ci`): ctest starts the costliest first, so that a long
# test does not run alone at the end of a parallel run with a core idle.
# A fresh build has no timing history of its own (Testing/Temporary/
# CTestCostData.txt); once it has, ctest prefers that.
set(moex_test_costs
  cluster.control_slurm 141
  cluster.control_hosts 68
  chaos.elastic_recovery 59
  cluster.slurm 55
  chaos.kill_rank_mid_step 31
  chaos.shm_leftovers 25
  control.restart_session 21
  control.python_client 21
  chaos.controller_restart 21
  chaos.state_dir 20
  chaos.kill_rank_mid_migration 20
  install.consumer 19
  control.metrics_session 19
  control.serve_guards 17
  chaos.bad_inputs 15
  fuzz.placement_file 14
  transport.mpirun.np8 13
  transport.mpirun.np4 13
  transport.mpirun.np3 13
  chaos.stopped_rank 13
  transport.mpirun.np2 12
  fuzz.job_spec 12
  fuzz.safetensors_header 11
  cluster.shape 11
  bench.cli_session 11
  control.log_session 9
  cluster.ucx_between_hosts 9
  cluster.lost_host.mpi 9
  chaos.unreachable_controller 9
  fuzz.config 8
  cluster.smoke 8
  cluster.lost_host.ucx 8
  run.rank_silent_mid_migration_is_named 6
  run.missing_rank_is_named 6
  cluster.run.1-2-3.ucx.flat 6
  cluster.run.1-2-3.ucx 6
  cluster.run.1-2-3.mpi.flat 6
  cluster.run.1-2-3.mpi 6
  run.family.qwen3_next 5
  run.family.qwen3_5_moe 5
  run.family.llama4 5
  run.family.gpt_oss 5
  control.cli_session 5
  cluster.run.2-3.ucx.flat 5
  cluster.run.2-2.ucx.fp8 5
  cluster.run.1-2-3.ucx.fp8 5
)
# Called at the end of each tests/ folder: a test's properties can be set
# only from the folder that added it (CMake 3.25).
function(moex_apply_test_costs)
  set(costs ${moex_test_costs})
  while(costs)
    list(POP_FRONT costs test cost)
    if(TEST ${test})
      set_tests_properties(${test} PROPERTIES COST ${cost})
    endif()
  endwhile()
endfunction()
