# cmake -DBUILD_DIR=... -DWORK_DIR=... -DEXAMPLE_DIR=... (see CMakeLists.txt) -P install_consumer.cmake
#
# 1. cmake --install BUILD_DIR --prefix WORK_DIR/prefix, and what it put there:
#    bin/moex, the package files, the static libraries of INSTALLED_LAYERS,
#    headers whose every #include "moex/..." is installed too, no path of the
#    build or source tree in the package files (the tree can be moved).
# 2. examples/moe_layer_mpi configured against it (find_package(moex), found
#    there and nowhere else), built, and run on 2 ranks under mpirun: PASS.
# 3. The installed moex runs (--version), and looks for the GPU plugin where
#    it was installed (PLUGIN_DIR; a stand-in file where none was built).
cmake_policy(VERSION 3.25)

set(prefix "${WORK_DIR}/prefix")
set(example_build "${WORK_DIR}/example")
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
string(TIMESTAMP started "%s")

# step(<name> <command...>): runs the command, prints its output and its wall
# time, fails the test on a non-zero exit; its output in step_output.
function(step name)
  string(TIMESTAMP t0 "%s")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE code OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 240)
  string(TIMESTAMP t1 "%s")
  math(EXPR took "${t1} - ${t0}")
  message("== ${name} (${took} s): ${ARGN}\n${out}${err}")
  if(NOT code EQUAL 0)
    message(FATAL_ERROR "install: ${name} failed (exit ${code})")
  endif()
  set(step_output "${out}${err}" PARENT_SCOPE)
endfunction()

# 1. The install tree.
step("install" "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${prefix}")
set(missing "")
foreach(file bin/moex ${LIBDIR}/cmake/moex/moexConfig.cmake ${LIBDIR}/cmake/moex/moexConfigVersion.cmake
             ${LIBDIR}/cmake/moex/moexTargets.cmake include/moex/core/build_info_generated.h)
  if(NOT EXISTS "${prefix}/${file}")
    list(APPEND missing "${file}")
  endif()
endforeach()
file(READ "${prefix}/${LIBDIR}/cmake/moex/moexTargets.cmake" targets_file)
foreach(layer IN LISTS INSTALLED_LAYERS)
  if(NOT EXISTS "${prefix}/${LIBDIR}/libmoex_${layer}.a")
    list(APPEND missing "${LIBDIR}/libmoex_${layer}.a")
  endif()
  if(NOT EXISTS "${prefix}/include/moex/${layer}")
    list(APPEND missing "include/moex/${layer}/")
  endif()
  if(NOT targets_file MATCHES "add_library\\(moex::${layer} STATIC IMPORTED\\)")
    list(APPEND missing "the target moex::${layer} in moexTargets.cmake")
  endif()
endforeach()
if(missing)
  message(FATAL_ERROR "install: missing from the install tree: ${missing}")
endif()

# Every installed header's #include "..." is installed (or is a third-party
# package's: absl, nlohmann).
file(GLOB_RECURSE headers RELATIVE "${prefix}/include" "${prefix}/include/*.h")
list(LENGTH headers header_count)
set(unresolved "")
foreach(header IN LISTS headers)
  file(STRINGS "${prefix}/include/${header}" includes REGEX "^#include \"")
  foreach(line IN LISTS includes)
    string(REGEX REPLACE "^#include \"([^\"]+)\".*" "\\1" included "${line}")
    if(included MATCHES "^(absl|nlohmann)/")
      continue()
    endif()
    if(NOT EXISTS "${prefix}/include/${included}")
      list(APPEND unresolved "${header} includes ${included}")
    endif()
  endforeach()
endforeach()
if(unresolved)
  string(REPLACE ";" "\n  " unresolved "${unresolved}")
  message(FATAL_ERROR "install: installed headers include what was not installed:\n  ${unresolved}")
endif()

# The package files name no folder of the build or the source tree.
file(GLOB package_files "${prefix}/${LIBDIR}/cmake/moex/*.cmake")
foreach(file IN LISTS package_files)
  file(READ "${file}" text)
  foreach(tree "${BUILD_DIR}" "${SOURCE_DIR}")
    string(FIND "${text}" "${tree}" at)
    if(NOT at EQUAL -1)
      message(FATAL_ERROR "install: ${file} names ${tree}: the installed package is not relocatable")
    endif()
  endforeach()
endforeach()
message("install: ${header_count} headers, their includes all installed; layers ${INSTALLED_LAYERS}")

# 2. A program of one's own against it.
set(configure "${CMAKE_COMMAND}" -S "${EXAMPLE_DIR}" -B "${example_build}" -G "${GENERATOR}"
    "-DCMAKE_PREFIX_PATH=${prefix}" "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}"
    "-DCMAKE_C_COMPILER=${C_COMPILER}" "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}")
if(MAKE_PROGRAM)
  list(APPEND configure "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(C_LAUNCHER)
  list(APPEND configure "-DCMAKE_C_COMPILER_LAUNCHER=${C_LAUNCHER}")
endif()
if(CXX_LAUNCHER)
  list(APPEND configure "-DCMAKE_CXX_COMPILER_LAUNCHER=${CXX_LAUNCHER}")
endif()
step("configure the example" ${configure})
file(STRINGS "${example_build}/CMakeCache.txt" moex_dir REGEX "^moex_DIR:")
if(NOT moex_dir STREQUAL "moex_DIR:PATH=${prefix}/${LIBDIR}/cmake/moex")
  message(FATAL_ERROR "install: the example found moex elsewhere than the install tree: ${moex_dir}")
endif()
# The package's own paths (moexConfig.cmake's), under the prefix it was found in.
if(NOT step_output MATCHES "moe_layer_mpi: moex ${VERSION}, binary ${prefix}/bin/moex, GPU plugin ([^\n]*)")
  message(FATAL_ERROR "install: moexConfig.cmake's moex_VERSION or moex_EXECUTABLE is not this install's")
endif()
set(example_plugin "${CMAKE_MATCH_1}")
if(GPU_PLUGIN_BUILT AND NOT example_plugin STREQUAL "${prefix}/${PLUGIN_DIR}/libmoex_gpu.so")
  message(FATAL_ERROR "install: moexConfig.cmake's moex_GPU_PLUGIN is '${example_plugin}'")
endif()
step("build the example" "${CMAKE_COMMAND}" --build "${example_build}")
step("run the example on 2 ranks" "${MPIEXEC}" -np 2 --oversubscribe --mca btl self,vader,tcp
     "${example_build}/moe_layer_mpi" tiny-dsv3 24)
if(NOT step_output MATCHES "check: [^\n]* PASS")
  message(FATAL_ERROR "install: the example did not print its PASS line")
endif()

# 3. The installed binary.
step("the installed moex" "${prefix}/bin/moex" --version)
if(NOT step_output MATCHES "^moex ${VERSION} ")
  message(FATAL_ERROR "install: the installed moex --version says: ${step_output}")
endif()
set(plugin "${prefix}/${PLUGIN_DIR}/libmoex_gpu.so")
if(GPU_PLUGIN_BUILT)
  if(NOT EXISTS "${plugin}")
    message(FATAL_ERROR "install: the GPU plugin was built but not installed at ${plugin}")
  endif()
  message("install: the GPU plugin is at ${plugin} (not loaded here: that needs a GPU)")
else()
  # No plugin was built: a stand-in that is no shared library, where the
  # installed moex must look for one (and nowhere else).
  file(WRITE "${plugin}" "not a shared library\n")
  execute_process(
    COMMAND "${CMAKE_COMMAND}" -E env --unset=MOEX_GPU_PLUGIN
            "${MPIEXEC}" -np 1 --oversubscribe --mca btl self,vader,tcp
            "${prefix}/bin/moex" run --quiet --timeout 30 --model tiny --device cuda --transport nccl --steps 1
    RESULT_VARIABLE code OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 120)
  message("== the installed moex looks for the GPU plugin:\n${out}${err}")
  file(REMOVE "${plugin}")
  string(FIND "${out}${err}" "needs the GPU plugin ${plugin}, which did not load" at)
  if(code EQUAL 0 OR at EQUAL -1)
    message(FATAL_ERROR "install: the installed moex did not look for the GPU plugin in ${prefix}/${PLUGIN_DIR}")
  endif()
endif()

string(TIMESTAMP finished "%s")
math(EXPR took "${finished} - ${started}")
message("install: PASS in ${took} s (install tree ${prefix})")
