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
    # A unity build (CMAKE_UNITY_BUILD, the CI presets) includes each .cc
    # into a generated file, and GCC then takes a class of a .cc that holds
    # a member of a type in its anonymous namespace for a header's: a false
    # -Wsubobject-linkage.
    if(CMAKE_UNITY_BUILD AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
      target_compile_options(${target} PRIVATE -Wno-subobject-linkage)
    endif()
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
  # Installed, the headers are under <prefix>/include and the target is
  # moex::<layer> again (moex_install_layers below).
  target_include_directories(${target} PUBLIC
    "$<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include>"
    "$<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>")
  set_target_properties(${target} PROPERTIES
    EXPORT_NAME ${layer}
    MOEX_LAYER_DEPS "${ARG_LAYERS}"
    MOEX_HEADER_DIRS "${CMAKE_CURRENT_SOURCE_DIR}/include")
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

# moex_layer_header_dir(<layer> <dir>): one more folder of the layer's public
# headers (a generated one: core's build_info_generated.h), seen by the
# targets that link the layer and installed with its headers.
function(moex_layer_header_dir layer dir)
  target_include_directories(moex_${layer} PUBLIC "$<BUILD_INTERFACE:${dir}>")
  set_property(TARGET moex_${layer} APPEND PROPERTY MOEX_HEADER_DIRS "${dir}")
endfunction()

# moex_layer_private_headers(<layer> <file names...>): headers in the layer's
# include folder that are not installed: those of another target that lives
# beside it (transport's nccl_transport.h is moex_transport_nccl's) or of a
# part this build left out (ucx_transport.h without UCX).
function(moex_layer_private_headers layer)
  set_property(TARGET moex_${layer} APPEND PROPERTY MOEX_HEADERS_NOT_INSTALLED ${ARGN})
endfunction()

# moex_dependency(<link item> <code>): how a project that finds the installed
# moex gets a third-party target a layer links: <code> goes into
# moexConfig.cmake (one line; the macros of cmake/moexConfig.cmake.in may be
# used). <link item> is a target's name or `<namespace>::*`. An installed
# layer that links a namespaced target with no such entry fails the
# configure, so the package file cannot forget one.
function(moex_dependency item code)
  set_property(GLOBAL PROPERTY "MOEX_DEPENDENCY_${item}" "${code}")
endfunction()

# The layers `layers` stand on, themselves included, lowest first.
function(_moex_layer_closure out_var)
  set(closure "")
  set(todo ${ARGN})
  while(todo)
    list(POP_FRONT todo layer)
    if(layer IN_LIST closure)
      continue()
    endif()
    list(APPEND closure ${layer})
    get_target_property(deps moex_${layer} MOEX_LAYER_DEPS)
    if(deps)
      list(APPEND todo ${deps})
    endif()
  endwhile()
  set(ordered "")
  foreach(layer IN LISTS MOEX_LAYER_ORDER)
    if(layer IN_LIST closure)
      list(APPEND ordered ${layer})
    endif()
  endforeach()
  set(${out_var} ${ordered} PARENT_SCOPE)
endfunction()

# moex_install_layers(<layers...>): installs the layers a program may use and
# every layer below them that they link: their static libraries
# (<libdir>/libmoex_<layer>.a), their public headers (<includedir>/moex/...),
# and one CMake package, moex (<libdir>/cmake/moex), whose targets are
# moex::<layer> as in the build and whose moexConfig.cmake finds the
# third-party packages those layers link (moex_dependency()).
function(moex_install_layers)
  _moex_layer_closure(layers ${ARGN})
  set(targets "")
  set(find_lines "")
  foreach(layer IN LISTS layers)
    set(target moex_${layer})
    list(APPEND targets ${target})
    get_target_property(dirs ${target} MOEX_HEADER_DIRS)
    get_target_property(skipped ${target} MOEX_HEADERS_NOT_INSTALLED)
    set(excludes "")
    if(skipped)
      foreach(name IN LISTS skipped)
        list(APPEND excludes PATTERN "${name}" EXCLUDE)
      endforeach()
    endif()
    foreach(dir IN LISTS dirs)
      install(DIRECTORY "${dir}/" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}" COMPONENT moex_dev
              FILES_MATCHING PATTERN "*.h" ${excludes})
    endforeach()
    get_target_property(libs ${target} INTERFACE_LINK_LIBRARIES)
    foreach(lib IN LISTS libs)
      if(lib MATCHES "^moex::" OR NOT lib MATCHES "::")
        continue()  # a layer (installed with it), or a plain library (dl)
      endif()
      get_property(code GLOBAL PROPERTY "MOEX_DEPENDENCY_${lib}")
      if(NOT code)
        string(REGEX REPLACE "::.*" "::*" namespace "${lib}")
        get_property(code GLOBAL PROPERTY "MOEX_DEPENDENCY_${namespace}")
      endif()
      if(NOT code)
        message(FATAL_ERROR "moex: layer '${layer}' is installed and links ${lib}, but no "
                            "moex_dependency() says how moexConfig.cmake finds it")
      endif()
      if(NOT code IN_LIST find_lines)
        list(APPEND find_lines "${code}")
      endif()
    endforeach()
  endforeach()
  install(TARGETS ${targets} EXPORT moexTargets
          ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}" COMPONENT moex_dev)

  set(config_dir "${CMAKE_INSTALL_LIBDIR}/cmake/moex")
  list(JOIN find_lines "\n" MOEX_FIND_DEPENDENCIES)
  list(JOIN ARGN " " MOEX_PUBLIC_LAYERS)
  list(JOIN layers " " MOEX_INSTALLED_LAYERS)
  include(CMakePackageConfigHelpers)
  configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/moexConfig.cmake.in"
    "${PROJECT_BINARY_DIR}/cmake/moexConfig.cmake"
    INSTALL_DESTINATION "${config_dir}"
    PATH_VARS CMAKE_INSTALL_BINDIR CMAKE_INSTALL_INCLUDEDIR MOEX_INSTALL_PLUGINDIR)
  write_basic_package_version_file("${PROJECT_BINARY_DIR}/cmake/moexConfigVersion.cmake"
    VERSION "${PROJECT_VERSION}" COMPATIBILITY SameMinorVersion)
  install(EXPORT moexTargets NAMESPACE moex:: FILE moexTargets.cmake
          DESTINATION "${config_dir}" COMPONENT moex_dev)
  install(FILES "${PROJECT_BINARY_DIR}/cmake/moexConfig.cmake" "${PROJECT_BINARY_DIR}/cmake/moexConfigVersion.cmake"
          DESTINATION "${config_dir}" COMPONENT moex_dev)
  set_property(GLOBAL PROPERTY MOEX_INSTALLED_LAYERS ${layers})
endfunction()
