#!/usr/bin/env bash
# The path of an insightface user through facekd at 112 px, from the command line alone:
#
#   1. facekd export-synth   SynthFaces at 112 px as RecordIO (train.rec/.idx/property), a .bin
#                            verification set and an IJB-C-style release; facekd inspect-rec
#   2. facekd train          an r18-family teacher (iresnet_tiny: IResNet-18's 2-2-2-2 blocks, narrow)
#                            with ArcFace and horizontal flip
#   3. facekd export         the teacher to ONNX with in-graph normalisation, as model-zoo files are
#   4. facekd train          a MobileFaceNet student with teacher: {onnx: …}, hflip: true and Intrinsic
#                            Sampling, SIGKILLed part-way and resumed
#   5. facekd eval --bin, facekd eval-ijb (student checkpoint, teacher ONNX), facekd export --check
#
# and ends with a table: student vs teacher (.bin Accuracy-Flip, IJB-C TAR@FAR) and the time of
# each step. Usage (after `make venv`):
#
#   scripts/rehearsal.sh [OUT]          # default OUT: runs/rehearsal
#
# Sizes come from the environment (defaults: the full rehearsal); tests/test_rehearsal.py runs a
# reduced one with REHEARSAL_IMAGE_SIZE=32 and a handful of identities. OMP_NUM_THREADS sets the
# torch threads of every step (default 2).
set -euo pipefail

OUT=${1:-runs/rehearsal}
FACEKD=${FACEKD:-.venv/bin/facekd}
PYTHON=${PYTHON:-$(dirname "$FACEKD")/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
SIZE=${REHEARSAL_IMAGE_SIZE:-112}
TRAIN_IDS=${REHEARSAL_TRAIN_IDENTITIES:-60}
TEST_IDS=${REHEARSAL_TEST_IDENTITIES:-100}
TEST_IMAGES=${REHEARSAL_TEST_IMAGES:-10}
GENUINE=${REHEARSAL_GENUINE_PAIRS:-500}
IMPOSTOR=${REHEARSAL_IMPOSTOR_PAIRS:-5000}
TEACHER_EPOCHS=${REHEARSAL_TEACHER_EPOCHS:-6}
STUDENT_EPOCHS=${REHEARSAL_STUDENT_EPOCHS:-4}
BATCH=${REHEARSAL_BATCH:-64}

mkdir -p "$OUT"
TIMES="$OUT/times.tsv"
printf 'step\twall_s\tcpu_s\n' >"$TIMES"

children_cpu() {  # CPU=<user> <system> of this shell's finished children, as `times` prints them
    local _
    times >"$OUT/.times"  # a builtin with a redirection runs in this shell, not in a subshell
    { read -r _ _; read -r CPU; } <"$OUT/.times"
}

step() {  # step NAME COMMAND...: run it, record wall and CPU seconds in times.tsv
    local name=$1 t0=$EPOCHREALTIME before
    shift
    children_cpu
    before=$CPU
    echo "== $name: $*"
    "$@"
    children_cpu
    awk -v n="$name" -v t0="$t0" -v t1="$EPOCHREALTIME" -v a="$before" -v b="$CPU" '
        function sec(x, p) { split(x, p, "m"); return p[1] * 60 + p[2] }
        BEGIN { split(a, u, " "); split(b, v, " ")
                printf "%s\t%.1f\t%.1f\n", n, t1 - t0, sec(v[1]) + sec(v[2]) - sec(u[1]) - sec(u[2]) }' >>"$TIMES"
}

# ---------------------------------------------------------------- 1. data
DATA="$OUT/data"
step "1 export-synth (${SIZE} px)" "$FACEKD" export-synth "$DATA" --preset default \
    --set image_size="$SIZE" --set num_train_identities="$TRAIN_IDS" --set num_test_identities="$TEST_IDS" \
    --set test_images_per_identity="$TEST_IMAGES" --set num_genuine_pairs="$GENUINE" --set num_impostor_pairs="$IMPOSTOR"
step "1 inspect-rec" "$FACEKD" inspect-rec "$DATA" --verify

# ---------------------------------------------------------------- 2. teacher
cat >"$OUT/teacher.yaml" <<EOF
data: {kind: recordio, path: $DATA, hflip: true}
model: {arch: iresnet_tiny, embedding_size: 128}
head: {name: arcface, s: 64, m: 0.5}
train:
  epochs: $TEACHER_EPOCHS
  batch_size: $BATCH
  lr: 0.1
  warmup_epochs: 1
run_dir: $OUT/teacher
EOF
step "2 train teacher (iresnet_tiny)" "$FACEKD" train "$OUT/teacher.yaml" --no-progress

# ---------------------------------------------------------------- 3. teacher → ONNX
step "3 export teacher to ONNX" "$FACEKD" export "$OUT/teacher/backbone.pth" --arch iresnet_tiny \
    --out "$OUT/teacher.onnx" --pixel-input

# ---------------------------------------------------------------- 4. student: ONNX teacher, hflip, IS; killed, resumed
cat >"$OUT/student.yaml" <<EOF
data: {kind: recordio, path: $DATA, hflip: true}
model: {arch: mbf_tiny, embedding_size: 128}
head: {name: arcface, s: 64, m: 0.5}
distill: {loss: l2, weighting: uniform, lambda: 20.0}
teacher: {onnx: $OUT/teacher.onnx}
sampler: {name: intrinsic, options: {bandwidth: 12deg}}
train:
  epochs: $STUDENT_EPOCHS
  batch_size: $BATCH
  lr: 0.1
  warmup_epochs: 1
  checkpoint_every: 2
run_dir: $OUT/student
EOF

kill_part_way() {  # start the student, SIGKILL it once a checkpoint is written, before it finishes
    "$FACEKD" train "$OUT/student.yaml" --no-progress &
    local pid=$!
    until [[ -f "$OUT/student/checkpoints/last.pt" ]]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "the student run ended before a checkpoint was written" >&2
            return 1
        fi
        sleep 0.2
    done
    kill -KILL "$pid"
    wait "$pid" || true
    if [[ -f "$OUT/student/done" ]]; then
        echo "the student run finished before it was killed: nothing was resumed" >&2
        return 1
    fi
    echo "killed (SIGKILL) after step $(tail -n 1 "$OUT/student/metrics.jsonl" | "$PYTHON" -c 'import json, sys; print(json.loads(sys.stdin.read())["step"])' 2>/dev/null || echo '?')"
}
step "4 train student, killed part-way" kill_part_way
step "4 resume student" "$FACEKD" train "$OUT/student.yaml" --no-progress

# ---------------------------------------------------------------- 5. evaluation and the MFR checks
BIN="$DATA/synth_val.bin"
step "5 eval --bin student" "$FACEKD" eval --arch mbf_tiny --checkpoint "$OUT/student" --bin "$BIN" --out "$OUT/eval/student"
step "5 eval --bin teacher (ONNX)" "$FACEKD" eval --onnx "$OUT/teacher.onnx" --bin "$BIN" --out "$OUT/eval/teacher"
step "5 eval-ijb student" "$FACEKD" eval-ijb --checkpoint "$OUT/student" --arch mbf_tiny --meta "$DATA/IJBC" \
    --out "$OUT/ijb/student"
step "5 eval-ijb teacher (ONNX)" "$FACEKD" eval-ijb --onnx "$OUT/teacher.onnx" --meta "$DATA/IJBC" --out "$OUT/ijb/teacher"
step "5 export student --check" "$FACEKD" export "$OUT/student/backbone.pth" --arch mbf_tiny \
    --out "$OUT/student.onnx" --check

# ---------------------------------------------------------------- the closing table
"$PYTHON" - "$OUT" <<'EOF' | tee "$OUT/rehearsal.md"
import csv, json, sys
from pathlib import Path

out = Path(sys.argv[1])
rows = []
for who in ("teacher", "student"):
    b = json.loads((out / "eval" / who / "eval_bin.json").read_text())["sets"][0]
    ijb = json.loads((out / "ijb" / who / "IJBC.json").read_text())
    tar = {f"{t['far']:.0e}": 100 * t["tar"] for t in ijb["tar_at_far_insightface"]}
    rows.append((who, b["accuracy_flip"], b["std"], tar, ijb))
fars = [f for f in ("1e-03", "1e-02", "1e-01") if f in rows[0][3]]
print(f"| model | .bin Accuracy-Flip | IJB-C-style TAR@FAR (%, insightface) {' / '.join(fars)} | AUC |")
print("|---|---|---|---|")
for who, acc, std, tar, ijb in rows:
    name = "teacher iresnet_tiny (ONNX)" if who == "teacher" else "student mbf_tiny (ONNX teacher, hflip, IS)"
    print(f"| {name} | {acc:.4f} ± {std:.4f} | {' / '.join(f'{tar[f]:.2f}' for f in fars)} | {ijb['auc']:.4f} |")
print(f"\nIJB-C-style pairs: {rows[0][4]['n_genuine']} genuine / {rows[0][4]['n_impostor']} impostor\n")
print("| step | wall s | CPU s |\n|---|---|---|")
total = [0.0, 0.0]
with open(out / "times.tsv") as f:
    for r in csv.DictReader(f, delimiter="\t"):
        print(f"| {r['step']} | {float(r['wall_s']):.1f} | {float(r['cpu_s']):.1f} |")
        total = [total[0] + float(r["wall_s"]), total[1] + float(r["cpu_s"])]
print(f"| **total** | **{total[0]:.1f}** | **{total[1]:.1f}** |")
EOF
