#!/usr/bin/env bash
# ABI check of the C header with libabigail: does include/natter.h still describe an ABI that
# programs built against the last released header can use? Run by `make test`.
#
#   scripts/abi-check.sh [BASELINE.h [CURRENT.h]]
#       compare CURRENT.h (default include/natter.h) with BASELINE.h (default
#       ffi/abi/natter-0.2.h, the header of the last released ABI); exit 0 when compatible,
#       1 on an ABI change, 2 when something else fails
#   scripts/abi-check.sh --self-test
#       prove that the check works: the current header passes against itself and with a
#       field added at the end of a struct allowed to grow, and copies of it with one real
#       break each fail (a field removed from the middle of a struct, a field retyped in a
#       struct allowed to grow, a parameter retyped, a function removed, an enum value changed)
#
# How: the ABI a header describes is what a C compiler makes of it. For each header this
# script writes a "probe" C file that includes it and defines one exported global variable
# per public function, typed as a pointer to that function (so that the DWARF records the
# exact signature), one per public type (so that types no signature uses are covered too)
# and one per enum (so that the enumerator values are recorded). Each probe is compiled with
# debug information into a shared object, abidw turns that into an ABI description, and
# abidiff compares the two. Added symbols are compatible and ignored (--no-added-syms); the
# changes reviewed as compatible are suppressed by ffi/abi/reviewed.abignore (see
# ffi/abi/README.md). Anything else is reported and fails.
#
# One more pass closes a gap in libabigail: a `has_data_member_inserted_at = end` suppression
# also hides changes to the fields the struct already had (a field retyped or moved; only
# removed fields and a smaller size defeat it). So for each struct that reviewed.abignore
# lets grow, the current header is compared once more with that struct cut down to as many
# fields as it has in the baseline, and without that suppression: its old fields must be
# exactly the baseline's.
#
# Needs gcc, awk and abidw/abidiff (Debian: abigail-tools; `make deps` installs it).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASELINE_DEFAULT="$ROOT/ffi/abi/natter-0.2.h"
CURRENT_DEFAULT="$ROOT/include/natter.h"
SUPPRESSIONS="$ROOT/ffi/abi/reviewed.abignore"
# The probes are compiled as C17 whatever the compiler's default, so that the result does
# not depend on the gcc version (natter.h declares its enums differently under C23).
# shellcheck disable=SC2054 # the commas belong to -Wl
CFLAGS=(-std=c17 -g -O0 -shared -fPIC -Wl,-soname,libnatter-abi-probe.so)

die() {
    echo "abi-check: $*" >&2
    exit 2
}

usage() {
    echo "usage: $0 [BASELINE.h [CURRENT.h]] | --self-test" >&2
    exit 2
}

for tool in gcc awk abidw abidiff; do
    command -v "$tool" >/dev/null ||
        die "$tool not found (Debian: apt-get install gcc abigail-tools, or run make deps)"
done
[ -f "$SUPPRESSIONS" ] || die "missing $SUPPRESSIONS"

TMP=$(mktemp -d -t natter-abi.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

# --- Reading the header ----------------------------------------------------------------------
# cbindgen writes every declaration from column 0 (its comments are indented under "/**"):
#   functions  `NatterResult natter_foo(NatterClient *client,` (the parameters may go on over
#              the next lines), `const char *natter_version(void);`
#   types      `typedef struct NatterClient NatterClient;` (an opaque handle),
#              `typedef struct {` + one line per field (`  uint32_t version;`) + `} NatterOptions;`,
#              `typedef uint32_t NatterResult;` (`typedef enum NatterResult NatterResult;` under
#              C23), `typedef void (*NatterEventCallback)(...);`
#   enums      `enum NatterResult` (the values; C code stores them in the uint32_t typedef)

functions_of() {
    sed -nE 's/^[A-Za-z_][A-Za-z0-9_ *]*[ *](natter_[a-z0-9_]+)\(.*/\1/p' "$1" | sort -u
}

types_of() {
    {
        sed -nE 's/^typedef [^(]*[ *]([A-Za-z_][A-Za-z0-9_]*);$/\1/p' "$1"
        sed -nE 's/^\} *([A-Za-z_][A-Za-z0-9_]*);$/\1/p' "$1"
        sed -nE 's/^typedef [^(]*\( *\* *([A-Za-z_][A-Za-z0-9_]*) *\).*/\1/p' "$1"
    } | sort -u
}

enums_of() {
    sed -nE 's/^enum ([A-Za-z_][A-Za-z0-9_]*)( *\{)?$/\1/p' "$1" | sort -u
}

# edit_struct NAME [count | keep N | drop I | append LINE] < header: the fields of the struct
# `typedef struct [tag] { ... } NAME;` are its lines `  type name;`. `count` prints how many it
# has (nothing when there is no such struct); the others print the header with only its first N
# fields, without its I-th field (from 1), or with LINE added as its last field.
edit_struct() {
    awk -v name="$1" -v action="$2" -v arg="${3:-}" '
        function flush(   i, f, n, field, skip, mine) {
            n = 0
            for (i = 1; i <= nbody; i++) if (body[i] ~ /^  [A-Za-z_].*;$/) field[++n] = i
            mine = (body[nbody] == "} " name ";")
            if (mine && action == "count") print n
            for (i = 1; i <= nbody; i++) {
                skip = 0
                if (mine && action == "keep") for (f = arg + 1; f <= n; f++) if (field[f] == i) skip = 1
                if (mine && action == "drop" && field[arg] == i) skip = 1
                if (mine && action == "append" && i == nbody) out(arg)
                if (!skip) out(body[i])
            }
            nbody = 0
        }
        function out(line) { if (action != "count") print line }
        /^typedef struct( [A-Za-z_][A-Za-z0-9_]*)? \{$/ { inside = 1; nbody = 0 }
        inside { body[++nbody] = $0; if ($0 ~ /^\}/) { inside = 0; flush() }; next }
        { out($0) }
    '
}

# --- The suppressions ------------------------------------------------------------------------

# The structs reviewed.abignore lets grow at their end (sections with
# `has_data_member_inserted_at = end`, each naming its type with `name =`).
growable_structs() {
    awk '
        function done() {
            if (grows && name == "") print "?"
            else if (grows) print name
            grows = 0; name = ""
        }
        /^[ \t]*\[/ { done() }
        /^[ \t]*name[ \t]*=/ { sub(/^[^=]*=[ \t]*/, ""); sub(/[ \t]*$/, ""); name = $0 }
        /^[ \t]*has_data_member_inserted_at[ \t]*=[ \t]*end[ \t]*$/ { grows = 1 }
        END { done() }
    ' "$SUPPRESSIONS"
}

# reviewed.abignore without the sections that let structs grow.
suppressions_without_growth() {
    awk '
        function done() { if (!grows) printf "%s", section; section = ""; grows = 0 }
        /^[ \t]*\[/ { done() }
        { section = section $0 "\n" }
        /^[ \t]*has_data_member_inserted_at[ \t]*=/ { grows = 1 }
        END { done() }
    ' "$SUPPRESSIONS"
}

GROWABLE=$(growable_structs)
if grep -qx '?' <<<"$GROWABLE"; then
    die "$SUPPRESSIONS: a has_data_member_inserted_at section must name its type with name ="
fi

# --- Probes and comparisons ------------------------------------------------------------------

# abi_of HEADER DIR [TYPES]: DIR/probe.abi, the ABI description of the header's probe
# (DIR/probe.c): all its functions, types and enums, or only the types TYPES.
abi_of() {
    local header=$1 dir=$2 name functions types enums
    mkdir -p "$dir"
    cp "$header" "$dir/natter.h"
    if [ $# -gt 2 ]; then
        functions="" types=$3 enums=""
    else
        functions=$(functions_of "$header")
        types=$(types_of "$header")
        enums=$(enums_of "$header")
        [ -n "$functions" ] || die "no natter_* function found in $header"
        [ -n "$types" ] || die "no typedef found in $header"
    fi
    {
        echo '/* Written by scripts/abi-check.sh: the ABI that natter.h describes, for abidw. */'
        echo '#include "natter.h"'
        echo
        echo '/* Each function, as a pointer to it: its whole signature. */'
        for name in $functions; do
            echo "__typeof__(&$name) natter_abi_probe_$name;"
        done
        echo
        # Through a pointer: the DWARF describes the whole type all the same, opaque handles
        # can be declared too, and a struct allowed to grow at its end does not change the
        # size of the probe's symbol (which no type suppression would cover).
        echo '/* Each type, through a pointer: its layout. */'
        for name in $types; do
            echo "$name *natter_abi_type_$name;"
        done
        echo
        echo '/* Each enum: its values. */'
        for name in $enums; do
            echo "enum $name natter_abi_enum_$name;"
        done
    } >"$dir/probe.c"
    gcc "${CFLAGS[@]}" -o "$dir/probe.so" "$dir/probe.c" ||
        die "the probe for $header does not compile ($dir/probe.c)"
    abidw --no-corpus-path --out-file "$dir/probe.abi" "$dir/probe.so" ||
        die "abidw failed on the probe for $header"
}

# run_abidiff OLD.abi NEW.abi SUPPRESSIONS REPORT: 0 when compatible, 1 on an ABI change
# (abidiff's bits 4: ABI change, 8: incompatible change); exits on a tool error (bits 1, 2).
run_abidiff() {
    local status=0
    abidiff --no-added-syms --suppressions "$3" "$1" "$2" >"$4" 2>&1 || status=$?
    if ((status & 3)); then
        cat "$4" >&2
        die "abidiff failed (exit status $status)"
    fi
    ((status & 12)) && return 1
    return 0
}

# compare BASELINE.h CURRENT.h WORKDIR: prints abidiff's report; 0 when compatible, 1 on an
# ABI change.
compare() {
    local old=$1 new=$2 work=$3 ok=0 name n grown=""
    abi_of "$old" "$work/old"
    abi_of "$new" "$work/new"
    run_abidiff "$work/old/probe.abi" "$work/new/probe.abi" "$SUPPRESSIONS" "$work/report" || ok=1
    cat "$work/report"

    # The fields that a struct allowed to grow had in the baseline must be unchanged: compare
    # the baseline's struct with the current one cut to as many fields, without the growth
    # suppression, in probes of these structs only (their other changes are reported above).
    cp "$new" "$work/prefix.h"
    for name in $GROWABLE; do
        n=$(edit_struct "$name" count <"$old")
        [ -n "$n" ] || continue # not in the baseline: nothing to keep
        grep -qx "$name" <<<"$(types_of "$new")" || continue # removed: reported above
        edit_struct "$name" keep "$n" <"$work/prefix.h" >"$work/prefix.tmp"
        mv "$work/prefix.tmp" "$work/prefix.h"
        grown+="${grown:+ }$name"
    done
    if [ -n "$grown" ]; then
        suppressions_without_growth >"$work/prefix.abignore"
        abi_of "$old" "$work/prefix-old" "$grown"
        abi_of "$work/prefix.h" "$work/prefix-new" "$grown"
        if ! run_abidiff "$work/prefix-old/probe.abi" "$work/prefix-new/probe.abi" \
            "$work/prefix.abignore" "$work/prefix.report"; then
            echo
            echo "The fields that these structs, which reviewed.abignore lets grow at their end," \
                "had in the baseline changed ($grown, cut to their baseline fields):"
            cat "$work/prefix.report"
            ok=1
        fi
    fi
    return $ok
}

abi_version_of() {
    local part v=""
    for part in MAJOR MINOR PATCH; do
        v+=${v:+.}$(sed -nE "s/^#define NATTER_ABI_$part ([0-9]+)$/\1/p" "$1")
    done
    [[ $v =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || v=unknown
    echo "$v"
}

# --- The check -------------------------------------------------------------------------------

check() {
    local old=${1:-$BASELINE_DEFAULT} new=${2:-$CURRENT_DEFAULT}
    [ -f "$old" ] || die "no baseline header $old"
    [ -f "$new" ] || die "no header $new"
    echo "abi-check: ${new#"$ROOT"/} (ABI $(abi_version_of "$new")) against" \
        "${old#"$ROOT"/} (ABI $(abi_version_of "$old"))"
    if compare "$old" "$new" "$TMP/check"; then
        echo "abi-check: compatible (additions and reviewed changes only)"
    else
        echo "abi-check: FAILED: the ABI changed (above). Review the change; if it is intended," \
            "either document it in ffi/abi/reviewed.abignore (only if it is compatible: see" \
            "ffi/abi/README.md) or bump NATTER_ABI_MINOR in ffi/src/lib.rs and refresh the" \
            "baseline." >&2
        exit 1
    fi
}

# --- The self-test ---------------------------------------------------------------------------

# mutate DESCRIPTION IN OUT COMMAND...: OUT is IN edited by COMMAND (reading IN on stdin);
# stops when the edit changed nothing (the header moved on: update the self-test).
mutate() {
    local what=$1 in=$2 out=$3
    shift 3
    "$@" <"$in" >"$out"
    if cmp -s "$in" "$out"; then
        die "self-test: could not inject \"$what\" (the header changed: update the self-test)"
    fi
}

SELF_FAILURES=0

# expect pass|fail DESCRIPTION BASELINE.h CURRENT.h
expect() {
    local want=$1 what=$2 got=pass work
    work=$(mktemp -d "$TMP/case.XXXXXX")
    echo "--- self-test: $what: expect $want"
    # Not in a pipeline: a tool error must stop the script, not count as a detected break.
    compare "$3" "$4" "$work" >"$work/output" || got=fail
    sed 's/^/    | /' "$work/output"
    if [ "$got" = "$want" ]; then
        echo "--- ok: $got"
    else
        echo "--- WRONG: $got, expected $want" >&2
        SELF_FAILURES=$((SELF_FAILURES + 1))
    fi
}

self_test() {
    local h=$CURRENT_DEFAULT b=$TMP/broken n
    mkdir -p "$b"
    for name in NatterEvent NatterOptions; do
        grep -qx "$name" <<<"$GROWABLE" ||
            die "self-test: reviewed.abignore no longer lets $name grow: update the self-test"
    done

    expect pass "the current header against itself" "$h" "$h"

    mutate "a field added at the end of NatterOptions" "$h" "$b/grown.h" \
        edit_struct NatterOptions append '  const char *abi_check_new_field;'
    expect pass "a field added at the end of NatterOptions (reviewed: it may grow there)" \
        "$h" "$b/grown.h"

    n=$(edit_struct NatterSearchDevice count <"$h")
    mutate "a field removed from NatterSearchDevice" "$h" "$b/removed-field.h" \
        edit_struct NatterSearchDevice drop $(((n + 1) / 2))
    expect fail "field $(((n + 1) / 2)) of $n removed from NatterSearchDevice" \
        "$h" "$b/removed-field.h"

    mutate "a field added at the end of NatterSearchDevice" "$h" "$b/grown-other.h" \
        edit_struct NatterSearchDevice append '  uint32_t abi_check_new_field;'
    expect fail "a field added at the end of NatterSearchDevice (filled in the caller's memory)" \
        "$h" "$b/grown-other.h"

    n=$(edit_struct NatterOptions count <"$h")
    mutate "a field removed from NatterOptions" "$h" "$b/removed-option.h" \
        edit_struct NatterOptions drop $(((n + 1) / 2))
    expect fail "field $(((n + 1) / 2)) of $n removed from NatterOptions (it may only grow)" \
        "$h" "$b/removed-option.h"

    mutate "a field of NatterEvent retyped" "$h" "$b/retyped-field.h" \
        sed -E '/^typedef struct \{$/,/^\}/ s/^  uint32_t code;$/  uint64_t code;/'
    expect fail "NatterEvent's code retyped from uint32_t to uint64_t (only growth is reviewed)" \
        "$h" "$b/retyped-field.h"

    mutate "a parameter retyped" "$h" "$b/param.h" \
        sed -E 's/^(NatterResult natter_call_set_muted\(.*)bool muted\);$/\1uint32_t muted);/'
    expect fail "natter_call_set_muted's parameter muted retyped from bool to uint32_t" \
        "$h" "$b/param.h"

    mutate "a function removed" "$h" "$b/removed-function.h" \
        sed -E '/^NatterResult natter_client_logout\(/d'
    expect fail "natter_client_logout removed" "$h" "$b/removed-function.h"

    mutate "an enum value changed" "$h" "$b/enum.h" \
        sed -E 's/^(  NATTER_WRONG_PASSWORD = )101,$/\1199,/'
    expect fail "NATTER_WRONG_PASSWORD's value changed from 101 to 199" "$h" "$b/enum.h"

    if ((SELF_FAILURES)); then
        echo "abi-check: self-test FAILED ($SELF_FAILURES wrong)" >&2
        exit 1
    fi
    echo "abi-check: self-test passed"
}

case "${1:-}" in
--self-test)
    [ $# -eq 1 ] || usage
    self_test
    ;;
-*) usage ;;
*)
    [ $# -le 2 ] || usage
    check "$@"
    ;;
esac
