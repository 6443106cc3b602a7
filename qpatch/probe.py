"""Discovery's questions to a running container in one exec instead of one round trip each.

discover() asks which ComfyUI servers run, whether the scripts in the container's command
launch main.py, which `*.sh` lie in the folders where one-click images keep their start
scripts (and what they say), and whether the server's own interpreter runs. Through the
Docker API each answer costs a round trip (an exec about 45 ms, a file read about 40 ms);
the probe gathers them in one `sh -c` run of a constant program, with the paths as argv,
and `parse` turns what it prints into a `Probe`.

A probe answers only what it can answer exactly as the single calls would; anything else
is left out, and discovery then asks the target itself (`Probe` says None). So a script
read in the probe is a regular, readable file at an absolute path, no bigger than
`MAX_SCRIPT_BYTES`; a relative path is the archive API's business (it resolves from `/`,
an exec from the working folder). An output that does not parse (no `sh`, a truncated
run, a file changing while it is read) yields None: discovery then asks call by call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from qpatch.errors import QpatchError
from qpatch.targets import procs
from qpatch.targets.base import Target

#: The largest script the probe returns: a start script is a few KiB, and a big `.sh`
#: (a self-extracting installer) is read through the archive API only if it is asked for.
MAX_SCRIPT_BYTES = 256 * 1024
HEADER = b"qpatch-probe 1\n"
_TAIL = b"\nend\n"

#: Runs in the target with `sh -c`. Constant: nothing from the user reaches it but argv,
#: `NS NF SCRIPT_1 .. SCRIPT_NS FOLDER_1 .. FOLDER_NF LEDGER...`. It prints, in this order:
#:
#:   qpatch-probe 1
#:   X TAB pid TAB status TAB argv0
#:                       `argv0 -c pass` for the first python running main.py in the scan,
#:                       when argv[0] is an absolute python path (discovery's first choice)
#:   P TAB pid TAB path  where argv[0] is a bare name (`python` after a venv's activate):
#:                       what `command -v` finds for it on the server's own PATH
#:   W TAB i TAB status  qpatch.ledger's test of LEDGER i (dirname without forking): 0 when
#:                       the folder exists writable, or could be created under its nearest
#:                       existing ancestor
#:   D TAB i             FOLDER i was listed with find; then one line per path it printed:
#:   F TAB i TAB path
#:   S TAB SIZE TAB path then SIZE bytes of that script and a newline: each SCRIPT and
#:                       each script found, once, if it is a regular readable file
#:   scan                then the process scan (procs.SCAN_SCRIPT's records, without the
#:                       probe's own processes), a newline and `end`, to the end
#:
#: Every line before `scan` begins with one of these words, and the bytes of a script are
#: framed by their size, so nothing a process or a file name holds can pass for a record.
#: Few forks (each costs a millisecond or two): no pipelines, lines split by the shell.
PROBE_SCRIPT = (
    r"""
nl='
'
tab='@TAB@'
soh='@SOH@'
main=main.
main=${main}py
scan_procs() {
  if command -v grep >/dev/null 2>&1; then
    found=$(LC_ALL=C grep -l 'main[.]py' /proc/[0-9]*/cmdline 2>/dev/null)
  else
    found=
    for d in /proc/[0-9]*; do
      [ -r "$d/cmdline" ] || continue
      case "$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null)" in
        *"$main"*) found=$found$d/cmdline$nl ;;
      esac
    done
  fi
  for f in $found; do
    d=${f%/cmdline}
    printf '%s\t%s\t%s\t' "${d#/proc/}" "$(readlink "$d/cwd")" "$(readlink "$d/exe")"
    tr '\0' '\001' 2>/dev/null < "$d/cmdline"
    echo
  done
}
scan=$(scan_procs)
echo 'qpatch-probe 1'
rest=$scan$nl
while [ -n "$rest" ]; do
  line=${rest%%"$nl"*}
  rest=${rest#*"$nl"}
  pid=${line%%"$tab"*}
  case $pid in '' | *[!0-9]*) continue ;; esac
  exe=${line#*"$tab"*"$tab"}
  argv=${exe#*"$tab"}
  exe=${exe%%"$tab"*}
  a0=${argv%%"$soh"*}
  case ${exe##*/} in python*) ;; *) continue ;; esac
  case "$soh${argv#*"$soh"}" in *"$soh$main$soh"* | *"/$main$soh"*) ;; *) continue ;; esac
  case $a0 in
    */* | *"$tab"*) ;;
    *)
      p=$(tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | sed -n 's/^PATH=//p')
      r=
      [ -n "$p" ] && r=$(PATH=$p && command -v -- "$a0")
      case $r in /*) printf 'P\t%s\t%s\n' "$pid" "$r" ;; esac
      break ;;
  esac
  case $a0 in *"$tab"*) break ;; /*) ;; *) break ;; esac
  case ${a0##*/} in python*) ;; *) break ;; esac
  "$a0" -c pass </dev/null >/dev/null 2>&1
  printf 'X\t%s\t%s\t%s\n' "$pid" "$?" "$a0"
  break
done
ns=$1
nf=$2
shift 2
scripts=
while [ "$ns" -gt 0 ]; do
  scripts=$scripts$1$nl
  shift
  ns=$((ns - 1))
done
folders=
while [ "$nf" -gt 0 ]; do
  folders=$folders$1$nl
  shift
  nf=$((nf - 1))
done
i=0
for d in "$@"; do
  while [ ! -e "$d" ]; do
    case $d in
      */*) d=${d%/*} && d=${d:-/} ;;
      *) d=. ;;
    esac
  done
  [ -w "$d" ]
  printf 'W\t%s\t%s\n' "$i" "$?"
  i=$((i + 1))
done
i=0
while [ -n "$folders" ]; do
  folder=${folders%%"$nl"*}
  folders=${folders#*"$nl"}
  printf 'D\t%s\n' "$i"
  if [ -d "$folder" ]; then
    list=$(find "$folder" -maxdepth 1 -name '*.sh' -type f 2>/dev/null)
    if [ -n "$list" ]; then
      scripts=$scripts$list$nl
      list=$list$nl
      while [ -n "$list" ]; do
        printf 'F\t%s\t%s\n' "$i" "${list%%"$nl"*}"
        list=${list#*"$nl"}
      done
    fi
  fi
  i=$((i + 1))
done
seen=$nl
while [ -n "$scripts" ]; do
  s=${scripts%%"$nl"*}
  scripts=${scripts#*"$nl"}
  case $s in /*) ;; *) continue ;; esac
  case $seen in *"$nl$s$nl"*) continue ;; esac
  seen=$seen$s$nl
  [ -f "$s" ] && [ -r "$s" ] || continue
  size=$(($(wc -c < "$s")))
  [ "$size" -le @MAX@ ] || continue
  printf 'S\t%s\t%s\n' "$size" "$s"
  head -c "$size" "$s"
  echo
done
printf 'scan\n%s\nend\n' "$scan"
""".replace("@MAX@", str(MAX_SCRIPT_BYTES))
    .replace("@TAB@", "\t")
    .replace("@SOH@", "\001")
)


@dataclass(frozen=True)
class Questions:
    """What to ask: `scripts` to read, `folders` to list `*.sh` in, and the candidate
    ledger folders to test for writability (as qpatch.ledger tests them)."""

    scripts: Sequence[str] = ()
    folders: Sequence[str] = ()
    ledgers: Sequence[str] = ()

    def askable(self) -> Questions:
        """Without the paths holding a newline: the probe's own command line is in its
        process scan and must not read as a record there. Those stay open."""
        return Questions(_one_line(self.scripts), _one_line(self.folders), _one_line(self.ledgers))

    def argv(self) -> list[str]:
        """The exec that runs the probe."""
        counts = [str(len(self.scripts)), str(len(self.folders))]
        paths = [*self.scripts, *self.folders, *self.ledgers]
        return ["sh", "-c", PROBE_SCRIPT, "sh", *counts, *paths]


def _one_line(paths: Sequence[str]) -> tuple[str, ...]:
    return tuple(p for p in paths if "\n" not in p)


def run_probe(target: Target, questions: Questions) -> Probe | None:
    """Probe a target that can exec; None when the probe did not run through."""
    questions = questions.askable()
    try:
        r = target.exec(questions.argv())
    except QpatchError:
        return None
    return parse(r.stdout, questions) if r.exit_code == 0 else None


@dataclass(frozen=True)
class Probe:
    """What one probe found; each question it left open is answered None."""

    #: procs.SCAN_SCRIPT's output, as DockerTarget.server_processes reads it
    scan: str
    #: pid -> (argv[0], exit status of `argv[0] -c pass`)
    pythons: Mapping[int, tuple[str, int]] = field(default_factory=dict)
    #: folder -> the lines `find FOLDER -maxdepth 1 -name '*.sh' -type f` printed
    listings: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: absolute path -> its bytes
    scripts: Mapping[str, bytes] = field(default_factory=dict)
    #: ledger folder -> whether it can be written (exists writable, or can be created)
    writable: Mapping[str, bool] = field(default_factory=dict)
    #: pid -> the interpreter a bare argv[0] names on that server's own PATH
    on_path: Mapping[int, str] = field(default_factory=dict)

    @property
    def servers(self) -> list[procs.Proc]:
        return procs.comfyui_servers(self.scan)

    def runs(self, python: str, server: procs.Proc | None) -> bool | None:
        """Whether `python -c pass` succeeds, when the probe ran it for this server."""
        if server is None or server.pid not in self.pythons:
            return None
        argv0, status = self.pythons[server.pid]
        return status == 0 if python == argv0 == server.argv[0] else None

    def listing(self, folders: Sequence[str]) -> str | None:
        """What one `find FOLDERS... -maxdepth 1 -name '*.sh' -type f` would print (in
        another order), when the probe listed every one of the folders."""
        if not all(f in self.listings for f in folders):
            return None
        return "".join(line + "\n" for f in folders for line in self.listings[f])

    def script(self, path: str) -> bytes | None:
        return self.scripts.get(path)


def parse(output: bytes, questions: Questions) -> Probe | None:
    """The probe's output for `questions` (as askable() left them), or None when it is not
    one whole, well-formed probe output."""
    if not output.startswith(HEADER) or not output.endswith(_TAIL):
        return None
    at = len(HEADER)
    pythons: dict[int, tuple[str, int]] = {}
    listed: dict[int, list[str]] = {}
    scripts: dict[str, bytes] = {}
    writable: dict[str, bool] = {}
    on_path: dict[int, str] = {}
    folders, ledgers = questions.folders, questions.ledgers
    try:
        while True:
            line, at = _line(output, at)
            kind, _, rest = line.partition(b"\t")
            if kind == b"scan" and not rest:
                break
            if kind == b"X":
                pid, status, argv0 = rest.split(b"\t", 2)
                pythons[int(pid)] = (_text(argv0), int(status))
            elif kind == b"P":
                pid, path = rest.split(b"\t", 1)
                on_path[int(pid)] = _text(path)
            elif kind == b"W":
                i, status = rest.split(b"\t", 1)
                writable[ledgers[_index(i, ledgers)]] = int(status) == 0
            elif kind == b"D":
                listed[_index(rest, folders)] = []
            elif kind == b"F":
                i, path = rest.split(b"\t", 1)
                listed[int(i)].append(_text(path))
            elif kind == b"S":
                size, path = rest.split(b"\t", 1)
                scripts[_text(path)], at = _blob(output, at, int(size))
            else:
                return None
    except (ValueError, KeyError):
        return None
    if at > len(output) - len(_TAIL):
        return None
    return Probe(
        scan=_text(output[at : len(output) - len(_TAIL)]),
        pythons=pythons,
        listings={folders[i]: _splitlines(lines) for i, lines in listed.items()},
        scripts=scripts,
        writable=writable,
        on_path=on_path,
    )


def _index(field: bytes, of: Sequence[str]) -> int:
    i = int(field)
    if not 0 <= i < len(of):
        raise ValueError("no such question")
    return i


def _line(data: bytes, at: int) -> tuple[bytes, int]:
    end = data.find(b"\n", at)
    if end < 0:
        raise ValueError("unterminated line")
    return data[at:end], end + 1


def _blob(data: bytes, at: int, size: int) -> tuple[bytes, int]:
    """`size` bytes and the newline after them."""
    end = at + size
    if size < 0 or data[end : end + 1] != b"\n":
        raise ValueError("bad framing")
    return data[at:end], end + 1


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")  # as ExecResult.text decodes


def _splitlines(lines: list[str]) -> tuple[str, ...]:
    """The lines as discovery reads find's output: joined back, split by str.splitlines."""
    return tuple(p for p in "\n".join(lines).splitlines() if p)
