#!/usr/bin/env bash
# CI: checks that the Dockerfile builds and that its final stage serves /health, without a Docker engine
# (these machines have none, and no route to Docker Hub for the base images). Each stage becomes a temp
# directory standing for its WORKDIR; the script reads the Dockerfile itself (never a file list of its
# own), so a COPY that misses something the build needs fails here as it would in `docker build`.
#
#   bash .ci/dockerfile-check.sh [DOCKERFILE]   (default: the repo's Dockerfile; sources come from the repo)
#
# What it cannot check: the base images' OS packages and layout (stages run on this machine's OS and
# Node, so the script insists that the base image's Node major version is the one running here), and
# USER: switching to the image's `node` user needs root and that user, so the stages run as whoever runs
# this script. Instructions it does not emulate fail the check rather than being skipped.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
health_timeout_s=120
started_s=$SECONDS
work=$(mktemp -d "${TMPDIR:-/tmp}/dockerfile-check.XXXXXX")

step="setup"
# The marker file lets the exit trap tell a FAIL already printed (in a subshell too) from errexit's silent exit.
fail() {
  echo "FAIL [$step] $*" >&2
  : >"$work/failed"
  exit 1
}
pass() { echo "PASS [$step] $*"; }
note() { echo "NOTE [$step] $*"; }

server_pid=""
# kill -0 succeeds on a zombie, and the server stays one (our unreaped child) once it exits.
running() {
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [[ -n $state && $state != Z ]]
}
stop_server() {
  [[ -n $server_pid ]] || return 0
  local waited_tenths=0
  if ! running "$server_pid"; then
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
    return 0
  fi
  # setsid made the server its own process group: TERM the group (a shell-form CMD's children too), then
  # KILL after docker stop's 10 s grace period.
  kill -TERM -- "-$server_pid" 2>/dev/null || true
  while running "$server_pid" && ((waited_tenths < 100)); do
    sleep 0.1
    waited_tenths=$((waited_tenths + 1))
  done
  if running "$server_pid"; then
    echo "NOTE [stop] the server did not exit within 10 s of SIGTERM: killed"
    kill -KILL -- "-$server_pid" 2>/dev/null || true
  else
    echo "NOTE [stop] the server exited $((waited_tenths / 10)).$((waited_tenths % 10)) s after SIGTERM"
  fi
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}
on_exit() {
  local status=$?
  stop_server
  if ((status != 0)) && [[ ! -e $work/failed ]]; then echo "FAIL [$step] a command failed (exit $status): see above" >&2; fi
  rm -rf "$work"
}
trap on_exit EXIT
dockerfile=$(realpath "${1:-$repo/Dockerfile}")

mode="emulated, no Docker engine used"
if ! command -v docker >/dev/null; then
  mode+="; none installed"
elif docker info >/dev/null 2>&1; then
  mode+="; one answers here, but this script does not use it"
else
  mode+="; a docker client is installed, but no engine answers"
fi
echo "Dockerfile check of $dockerfile: $mode"

# Node resolves packages in parent directories too; in the image /app has none above it, so nor may the
# temp directories, or a missing dependency could be found there.
dir=$work
while [[ $dir != / ]]; do
  dir=$(dirname "$dir")
  [[ ! -e $dir/node_modules ]] || fail "$dir/node_modules would stand in for the image's; set TMPDIR elsewhere"
done

# A container starts with the image's environment, not the caller's: pass only what reaching the npm
# registry and its cache needs, then the stage's ENV.
host_env=(HOME="$HOME" PATH="$PATH")
for name in TMPDIR http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY \
  NODE_EXTRA_CA_CERTS SSL_CERT_FILE SSL_CERT_DIR npm_config_registry npm_config_cache; do
  if [[ -n ${!name:-} ]]; then host_env+=("$name=${!name}"); fi
done

# Prints a JSON array of strings (exec form) as NUL-separated words; exits 1 on anything else.
json_words() {
  node -e 'const a = JSON.parse(process.argv[1]);
    if (!Array.isArray(a) || a.length === 0 || !a.every((s) => typeof s === "string")) process.exit(1);
    process.stdout.write(a.map((s) => s + "\0").join(""));' "$1" 2>/dev/null
}

# argv for a RUN/CMD/HEALTHCHECK command: exec form as written, shell form through /bin/sh -c as Docker does.
# shellcheck disable=SC2034 # out is a nameref: the caller's array is the output
command_words() {
  local -n out=$1
  if [[ $2 != \[* ]]; then
    out=(/bin/sh -c "$2")
    return
  fi
  json_words "$2" >/dev/null || fail "exec form is not a non-empty JSON array of strings: $2"
  mapfile -d '' -t out < <(json_words "$2")
}

# ---- read the Dockerfile into logical instructions (continuations joined, comments dropped) ----
step="parse $dockerfile"
[[ -f $dockerfile ]] || fail "no such file"
instructions=()
pending=""
continued='^(.*)\\[[:space:]]*$'
while IFS= read -r line || [[ -n $line ]]; do
  line=${line%$'\r'}
  [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
  if [[ $line =~ $continued ]]; then pending+=${BASH_REMATCH[1]}; continue; fi
  instructions+=("$pending$line")
  pending=""
done <"$dockerfile"
[[ -z $pending ]] || instructions+=("$pending")

# ---- the build context: the repo less .dockerignore, as `docker build .` would send it ----
step="context"
ctx="$work/context"
mkdir -p "$ctx"
ignore_patterns="$work/dockerignore"
: >"$ignore_patterns"
if [[ -f $repo/.dockerignore ]]; then
  while IFS= read -r pattern || [[ -n $pattern ]]; do
    pattern=${pattern%$'\r'}
    [[ $pattern =~ ^[[:space:]]*(#|$) ]] && continue
    # tar's anchored patterns match Docker's for plain names and single-level globs, not for these.
    [[ $pattern == \!* || $pattern == *'**'* ]] && fail ".dockerignore pattern '$pattern' is not emulated"
    pattern=${pattern#/}
    echo "${pattern%/}" >>"$ignore_patterns"
  done <"$repo/.dockerignore"
fi
if ! (
  cd "$repo"
  shopt -s dotglob
  tar -cf - --anchored --no-wildcards-match-slash --exclude-from="$ignore_patterns" -- *
) | tar -C "$ctx" -xf -; then
  fail "could not copy $repo less .dockerignore into $ctx"
fi

# ---- stages ----
stage_names=()
stage_dirs=()
stage_workdirs=()
stage=-1
stage_env=()
cmd=""
healthcheck=""
expose=""

# Maps a path inside stage $1's filesystem to this machine: only the stage's WORKDIR exists here.
stage_path() {
  local index=$1 path=$2 workdir=${stage_workdirs[$1]}
  [[ -n $workdir ]] || fail "'$path' is used before the stage's WORKDIR; only WORKDIR is emulated"
  if [[ /$path/ == */../* ]]; then fail "'$path' leaves the WORKDIR; not emulated"; fi
  if [[ $path == /* ]]; then
    [[ $path == "$workdir" || $path == "$workdir"/* ]] || fail "'$path' is outside WORKDIR $workdir; not emulated"
    path=${path#"$workdir"}
    path=${path#/}
  fi
  echo "${stage_dirs[$index]}/${path:-.}"
}

stage_index() {
  local i
  for ((i = 0; i < stage; i++)); do
    if [[ ${stage_names[$i]} == "$1" || $i == "$1" ]]; then
      echo "$i"
      return
    fi
  done
  fail "COPY --from=$1: not an earlier stage (copying from another image is not emulated)"
}

copy_instruction() {
  local from="" word words sources=() dest target source
  if [[ $1 == \[* ]]; then fail "JSON-form COPY is not emulated"; fi
  read -ra words <<<"$1"
  for word in "${words[@]}"; do
    case $word in
      --from=*) from=${word#--from=} ;;
      # Ownership and permissions need root and the image's users (see USER), and --link is a cache detail.
      --chown=* | --chmod=* | --link | --link=*) ;;
      --*) fail "COPY flag $word is not emulated" ;;
      *) sources+=("$word") ;;
    esac
  done
  ((${#sources[@]} >= 2)) || fail "COPY needs a source and a destination: $1"
  dest=${sources[-1]}
  unset 'sources[-1]'

  local expanded=() pattern matches from_index from_path
  for pattern in "${sources[@]}"; do
    if [[ -n $from ]]; then
      from_index=$(stage_index "$from")
      [[ $pattern == /* ]] || fail "COPY --from=$from $pattern: relative paths in another stage are not emulated"
      from_path=$(stage_path "$from_index" "$pattern")
      matches=("$from_path")
    else
      pattern=${pattern#/}
      if [[ /$pattern/ == */../* ]]; then fail "COPY $pattern leaves the build context"; fi
      matches=()
      shopt -s nullglob dotglob
      # shellcheck disable=SC2206 # the glob in the source is meant to expand, as Docker expands it
      matches=("$ctx"/$pattern)
      shopt -u nullglob dotglob
    fi
    if ((${#matches[@]} == 0)) || [[ ! -e ${matches[0]} ]]; then
      if [[ -n $from ]]; then fail "COPY --from=$from $pattern: not found in stage $from"; fi
      fail "COPY $pattern: not found in the build context (is it in .dockerignore?)"
    fi
    expanded+=("${matches[@]}")
  done
  if ((${#expanded[@]} > 1)) && [[ $dest != */ ]]; then
    fail "COPY with several sources needs a destination ending in /: $1"
  fi

  # An earlier stage is finished, so hard links stand in for copies of its (large) node_modules.
  local cp_flags=(-a)
  if [[ -n $from ]]; then cp_flags=(-al); fi
  target=$(stage_path "$stage" "$dest")
  for source in "${expanded[@]}"; do
    if [[ -d $source ]]; then
      # Docker copies a directory's contents, not the directory itself.
      mkdir -p "$target"
      cp "${cp_flags[@]}" "$source/." "$target/"
    elif [[ $dest == */ || -d $target ]]; then
      mkdir -p "$target"
      cp "${cp_flags[@]}" "$source" "$target/"
    else
      mkdir -p "$(dirname "$target")"
      cp "${cp_flags[@]}" "$source" "$target"
    fi
  done
}

env_instruction() {
  local args=$1 token tokens
  if [[ $args == *'$'* ]]; then fail "ENV with variable substitution is not emulated: $args"; fi
  if [[ ${args%%[[:space:]]*} != *=* ]]; then
    # Legacy form `ENV KEY value with spaces`.
    stage_env+=("${args%%[[:space:]]*}=$(sed -E 's/^[^[:space:]]+[[:space:]]+//' <<<"$args")")
    return
  fi
  # xargs splits on blanks and honours quotes and backslashes, as the Dockerfile's KEY=VALUE form does.
  printf '%s' "$args" | xargs -r printf '%s\0' >/dev/null || fail "unbalanced quotes in ENV $args"
  mapfile -d '' -t tokens < <(printf '%s' "$args" | xargs -r printf '%s\0')
  for token in "${tokens[@]}"; do
    [[ $token == ?*=* ]] || fail "ENV expects KEY=VALUE, got '$token'"
    stage_env+=("$token")
  done
}

run_instruction() {
  local argv=() log="$work/run-$stage-$RANDOM.log" run_started_s=$SECONDS
  command_words argv "$1"
  echo "---- RUN $1 (in ${stage_dirs[$stage]})"
  if ! (cd "${stage_dirs[$stage]}" && env -i "${host_env[@]}" "${stage_env[@]}" "${argv[@]}") >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    fail "RUN $1 exited non-zero (last 40 lines above)"
  fi
  pass "RUN $1 ($((SECONDS - run_started_s)) s)"
}

node_major=$(node -p 'process.versions.node.split(".")[0]')
for instruction in "${instructions[@]}"; do
  keyword=${instruction%%[[:space:]]*}
  keyword=${keyword^^}
  args=$(sed -E 's/^[^[:space:]]+[[:space:]]*//' <<<"$instruction")
  if [[ $keyword != FROM ]]; then
    step=$keyword
    ((stage >= 0)) || fail "$keyword before the first FROM is not emulated"
    step="${stage_names[$stage]:-stage $stage}: $keyword"
  fi
  case $keyword in
    FROM)
      stage=$((stage + 1))
      step="stage $stage: FROM"
      read -r image as name _ <<<"$args"
      if [[ $image == --* ]]; then fail "FROM flag $image is not emulated"; fi
      [[ ${as^^} == AS ]] || name=""
      step="${name:-stage $stage}: FROM"
      if [[ $image == *'$'* ]]; then fail "FROM with a build argument is not emulated"; fi
      for existing in "${stage_names[@]}"; do
        if [[ -n $existing && $existing == "$image" ]]; then fail "FROM an earlier stage is not emulated"; fi
      done
      image_major=$(sed -nE 's#^(docker\.io/)?(library/)?node:([0-9]+).*#\3#p' <<<"$image")
      [[ -n $image_major ]] || fail "base image $image: not a node:<major> image, so its Node version is unknown"
      [[ $image_major == "$node_major" ]] ||
        fail "base image $image has Node $image_major, this machine runs Node $(node --version): the check would run the wrong Node"
      stage_names[stage]=$name
      stage_dirs[stage]="$work/stage-$stage${name:+-$name}"
      stage_workdirs[stage]=""
      mkdir -p "${stage_dirs[$stage]}"
      stage_env=()
      cmd=""
      healthcheck=""
      expose=""
      pass "$image (Node $image_major; this machine: Node $(node --version)); its OS packages are not checked"
      ;;
    WORKDIR)
      [[ $args == /* ]] || fail "relative WORKDIR is not emulated: $args"
      [[ -z ${stage_workdirs[$stage]} || ${stage_workdirs[$stage]} == "${args%/}" ]] ||
        fail "a second WORKDIR ($args after ${stage_workdirs[$stage]}) is not emulated"
      stage_workdirs[stage]=${args%/}
      ;;
    COPY)
      copy_instruction "$args"
      pass "$args"
      ;;
    RUN) run_instruction "$args" ;;
    ENV) env_instruction "$args" ;;
    CMD) cmd=$args ;;
    HEALTHCHECK) healthcheck=$args ;;
    EXPOSE) expose=$args ;;
    USER) note "USER $args not emulated (needs root and the image's user): runs as $(id -un)" ;;
    LABEL) ;;
    *) fail "instruction $keyword is not emulated; extend .ci/dockerfile-check.sh or build with a Docker engine" ;;
  esac
done
((stage >= 0)) || fail "no FROM in $dockerfile"
step="build"
pass "every stage's COPY and RUN succeeded"

# ---- run the final stage's CMD on loopback and a free port ----
step="${stage_names[$stage]:-stage $stage}: CMD"
[[ -n $cmd ]] || fail "the final stage has no CMD"
# The image listens on all interfaces at MOE_SERVE_PORT; tests stay on loopback, on a port nobody uses.
image_port=$(printf '%s\n' "${stage_env[@]}" | sed -n 's/^MOE_SERVE_PORT=//p' | tail -n 1)
if [[ -n $expose && -n $image_port ]]; then
  [[ ${expose%%/*} == "$image_port" ]] || fail "EXPOSE $expose but ENV MOE_SERVE_PORT=$image_port"
fi
port=$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });')
runtime_env=("${host_env[@]}" "${stage_env[@]}" MOE_SERVE_HOST=127.0.0.1 MOE_SERVE_PORT="$port")
cmd_argv=()
command_words cmd_argv "$cmd"
server_log="$work/server.log"
echo "---- CMD $cmd (in ${stage_dirs[$stage]}, MOE_SERVE_HOST=127.0.0.1 MOE_SERVE_PORT=$port)"
(cd "${stage_dirs[$stage]}" && exec setsid env -i "${runtime_env[@]}" "${cmd_argv[@]}") >"$server_log" 2>&1 &
server_pid=$!

health_url="http://127.0.0.1:$port/health"
waited_from_s=$SECONDS
until node -e 'fetch(process.argv[1], { signal: AbortSignal.timeout(5000) }).then((r) => process.exit(r.status === 200 ? 0 : 1), () => process.exit(1))' "$health_url"; do
  if ! running "$server_pid"; then
    tail -n 40 "$server_log" >&2
    fail "the server exited before $health_url answered 200 (its last 40 lines above)"
  fi
  if ((SECONDS - waited_from_s >= health_timeout_s)); then
    tail -n 40 "$server_log" >&2
    fail "$health_url did not answer 200 within $health_timeout_s s (server's last 40 lines above)"
  fi
  sleep 1
done
pass "GET $health_url answered 200 after $((SECONDS - waited_from_s)) s"

step="${stage_names[$stage]:-stage $stage}: HEALTHCHECK"
if [[ -z $healthcheck || ${healthcheck^^} == NONE ]]; then
  note "no HEALTHCHECK"
else
  timeout_s=30
  retries=3
  read -ra words <<<"$healthcheck"
  for word in "${words[@]}"; do
    case $word in
      --timeout=*)
        [[ $word =~ ^--timeout=([0-9]+)s$ ]] || fail "HEALTHCHECK $word: only whole seconds are understood"
        timeout_s=${BASH_REMATCH[1]}
        ;;
      --retries=*) retries=${word#--retries=} ;;
      --interval=* | --start-period=* | --start-interval=*) ;;
      CMD) break ;;
      *) fail "HEALTHCHECK option $word is not understood" ;;
    esac
  done
  [[ $healthcheck =~ (^|[[:space:]])CMD[[:space:]]+(.*)$ ]] || fail "HEALTHCHECK without CMD: $healthcheck"
  healthcheck_cmd=${BASH_REMATCH[2]}
  healthcheck_argv=()
  command_words healthcheck_argv "$healthcheck_cmd"
  healthy=""
  # Docker marks a container unhealthy after `retries` consecutive failures, each cut off at `timeout`.
  for attempt in $(seq "$retries"); do
    if (cd "${stage_dirs[$stage]}" && timeout "$timeout_s" env -i "${runtime_env[@]}" "${healthcheck_argv[@]}"); then
      healthy=yes
      break
    fi
    note "attempt $attempt of $retries failed"
    sleep 1
  done
  [[ -n $healthy ]] || fail "HEALTHCHECK CMD failed $retries times: $healthcheck_cmd"
  pass "HEALTHCHECK CMD exited 0"
fi

step="stop"
stop_server
echo "PASS Dockerfile check of $dockerfile ($mode): $((SECONDS - started_s)) s"
