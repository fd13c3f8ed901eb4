# cmake -DMOEX_SOURCE_DIR=... -DMOEX_LAYER_ORDER="core;model;..."
#       -DMOEX_LAYER_DIRS="runtime/core:core;..." -P check_layering.cmake
#
# A file belongs to the layer whose folder (as moex_add_layer() recorded it)
# holds it; it may include moex/<other>/ only when <other> is not above it.
set(layer_dirs ${MOEX_LAYER_DIRS})
if(NOT layer_dirs)
  message(FATAL_ERROR "check_layering: MOEX_LAYER_DIRS is empty")
endif()
file(GLOB_RECURSE sources
  "${MOEX_SOURCE_DIR}/runtime/*.h" "${MOEX_SOURCE_DIR}/runtime/*.cc"
  "${MOEX_SOURCE_DIR}/kernels/*.h" "${MOEX_SOURCE_DIR}/kernels/*.cc" "${MOEX_SOURCE_DIR}/kernels/*.cu"
  "${MOEX_SOURCE_DIR}/cluster/*.h" "${MOEX_SOURCE_DIR}/cluster/*.cc"
  "${MOEX_SOURCE_DIR}/launcher/*.h" "${MOEX_SOURCE_DIR}/launcher/*.cc")
set(violations "")
set(checked 0)
foreach(source IN LISTS sources)
  file(RELATIVE_PATH rel "${MOEX_SOURCE_DIR}" "${source}")
  # The deepest folder that holds the file names its layer (cluster/worker
  # is `worker`, cluster/ is `cluster`).
  set(own "")
  set(own_length 0)
  foreach(pair IN LISTS layer_dirs)
    string(REPLACE ":" ";" pair "${pair}")
    list(GET pair 0 dir)
    list(GET pair 1 layer)
    string(FIND "${rel}" "${dir}/" at)
    string(LENGTH "${dir}" length)
    if(at EQUAL 0 AND length GREATER own_length)
      set(own "${layer}")
      set(own_length ${length})
    endif()
  endforeach()
  if(own STREQUAL "")
    string(APPEND violations "\n  ${rel}: not inside any layer's folder")
    continue()
  endif()
  list(FIND MOEX_LAYER_ORDER "${own}" own_index)
  file(STRINGS "${source}" includes REGEX "^#include \"moex/[a-z_]+/")
  foreach(line IN LISTS includes)
    string(REGEX REPLACE "^#include \"moex/([a-z_]+)/.*" "\\1" included "${line}")
    list(FIND MOEX_LAYER_ORDER "${included}" included_index)
    if(included_index GREATER own_index)
      string(APPEND violations "\n  ${rel} (layer ${own}) includes moex/${included}/ from above it")
    endif()
  endforeach()
  math(EXPR checked "${checked} + 1")
endforeach()
if(violations)
  message(FATAL_ERROR "layering violations:${violations}")
endif()
message(STATUS "layering: ${checked} files checked, no upward includes")
