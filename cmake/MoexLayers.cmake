# moex's layering rule, enforced by the build: MOEX_LAYER_ORDER below is
# its one statement (docs/architecture.md shows it; tests/layering reads it
# and the layers' folders from here).
#
# Each layer is one library target `moex_<layer>` (alias `moex::<layer>`)
# whose public headers live in `<layer dir>/include/moex/<layer>/`. A target
# only sees the include directories of the layers it links, and
# moex_add_layer() refuses to link a layer that is not strictly below it, so
# an upward include fails to compile and an upward link fails to configure.
# tests/layering additionally scans every source file's #include lines.

set(MOEX_LAYER_ORDER
  core model plan placement job launcher kernels transport ep balance run bench cluster worker cli
  CACHE INTERNAL "moex layers, lowest first")

function(_moex_layer_index layer out_var)
  list(FIND MOEX_LAYER_ORDER "${layer}" index)
  if(index EQUAL -1)
    message(FATAL_ERROR "moex: '${layer}' is not a layer; known layers: ${MOEX_LAYER_ORDER}")
  endif()
  set(${out_var} ${index} PARENT_SCOPE)
endfunction()

# Flags every moex target compiles with; kept on targets, never global.
function(moex_target_defaults target)
  target_compile_features(${target} PUBLIC cxx_std_20)
  set_target_properties(${target} PROPERTIES CXX_EXTENSIONS OFF)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow)
    if(MOEX_WARNINGS_AS_ERRORS)
      target_compile_options(${target} PRIVATE -Werror)
    endif()
  endif()
endfunction()

# moex_add_layer(<layer>
#   SOURCES <files...>
#   [LAYERS <lower moex layers...>]
#   [LIBS <third-party targets...>])
function(moex_add_layer layer)
  cmake_parse_arguments(ARG "" "" "SOURCES;LAYERS;LIBS" ${ARGN})
  _moex_layer_index(${layer} own_index)
  set(target moex_${layer})
  add_library(${target} STATIC ${ARG_SOURCES})
  add_library(moex::${layer} ALIAS ${target})
  moex_target_defaults(${target})
  target_include_directories(${target} PUBLIC "${CMAKE_CURRENT_SOURCE_DIR}/include")
  foreach(dep IN LISTS ARG_LAYERS)
    _moex_layer_index(${dep} dep_index)
    if(NOT dep_index LESS own_index)
      message(FATAL_ERROR
        "moex layering: '${layer}' may not depend on '${dep}' "
        "(order, lowest first: ${MOEX_LAYER_ORDER})")
    endif()
    target_link_libraries(${target} PUBLIC moex::${dep})
  endforeach()
  if(ARG_LIBS)
    target_link_libraries(${target} PUBLIC ${ARG_LIBS})
  endif()
  set_property(GLOBAL APPEND PROPERTY MOEX_LAYER_TARGETS ${target})
  # Where the layer's files live, for tests/layering's scan of #include lines.
  file(RELATIVE_PATH layer_dir "${PROJECT_SOURCE_DIR}" "${CMAKE_CURRENT_SOURCE_DIR}")
  set_property(GLOBAL APPEND PROPERTY MOEX_LAYER_DIRS "${layer_dir}:${layer}")
endfunction()
