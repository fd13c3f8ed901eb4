// Shared by SpawnInNewGroup and RunCommand (subprocess.h): how a child is
// started, apart from where its output goes.
#pragma once

#include <spawn.h>
#include <sys/types.h>

#include <string>
#include <vector>

namespace moex::internal {

// posix_spawnp of `args` as the leader of a new process group, with an
// empty signal mask and default dispositions, and this process's
// environment with `extra_env` ("KEY=VALUE") overriding it. `actions`: the
// caller's file actions. Returns posix_spawnp's error (0: started).
int SpawnGroupLeader(const std::vector<std::string>& args, const std::vector<std::string>& extra_env,
                     const posix_spawn_file_actions_t* actions, pid_t* pid);

}  // namespace moex::internal
