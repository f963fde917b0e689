#!/usr/bin/env bash
# Binarise a raw text corpus for fairseq: sentencepiece on the train split, then
# fairseq-preprocess --only-source.
#
# usage: scripts/prepare_data.sh RAW_DIR NAME [--vocab-size N] [--model-type bpe|unigram]
#        scripts/prepare_data.sh RAW_DIR NAME --bart BART_DIR
#        scripts/prepare_data.sh RAW_DIR NAME --pairs [--bart BART_DIR | --like DATA_DIR]
#
#   RAW_DIR      folder with train.txt, valid.txt, test.txt (one sentence per line)
#   --pairs      paired data for bart_cvae: RAW_DIR holds {train,valid,test}.{src,tgt}, line i
#                of .tgt the target of line i of .src; one segmentation and one dictionary for
#                both sides (--joined-dictionary), binarised as --source-lang src --target-lang
#                tgt (train with --task text_vae --source-lang src --target-lang tgt)
#   NAME         output goes to $DATA_BIN/NAME (DATA_BIN defaults to data-bin, relative to
#                the current directory); an existing $DATA_BIN/NAME is replaced
#   --vocab-size sentencepiece vocabulary size (default 1000); a soft limit, so a small corpus
#                may end up with fewer pieces instead of failing
#   --model-type sentencepiece model type (default bpe: on a corpus with few word types, such
#                as corpus/synth, unigram caps out at ~300 pieces and splits most words)
#   --bart DIR   BART mode, to fine-tune a pretrained BART checkpoint: instead of training
#                sentencepiece, apply GPT-2 BPE with DIR/encoder.json and DIR/vocab.bpe (local
#                files, nothing is downloaded) and binarise with the checkpoint's DIR/dict.txt
#   --like DIR   the segmentation and dictionary of an existing data-bin folder (DIR/spm.model,
#                DIR/dict.txt) instead of new ones: to fine-tune a model trained on DIR's data
#                (e.g. --pairs --like data-bin/synth, for the shipped BART)
#
# environment:
#   PYTHON       interpreter with sentencepiece and fairseq (default: .venv/bin/python of this
#                repository if it exists, else python3)
#   DATA_BIN     output root (default: data-bin)
#   WORKERS      fairseq-preprocess workers (default: 2)
#
# Output in $DATA_BIN/NAME: dict.txt, {train,valid,test}.{bin,idx} (what fairseq's
# --only-source mode writes, no language suffix; with --pairs dict.{src,tgt}.txt, one content,
# and {split}.src-tgt.{src,tgt}.{bin,idx}), and spm.model / spm.vocab for decoding, e.g.
#   python scripts/spm_encode.py --model $DATA_BIN/NAME/spm.model --decode < pieces.txt
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "$SCRIPT_DIR")"
SPLITS=(train valid test)

die() {
    echo "prepare_data.sh: error: $*" >&2
    exit 1
}

usage() {
    sed -n '2,31p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

VOCAB_SIZE=1000
MODEL_TYPE=bpe
BART_DIR=
LIKE_DIR=
PAIRS=
POSITIONAL=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --vocab-size)
            [ $# -ge 2 ] || die "--vocab-size needs a value"
            VOCAB_SIZE="$2"
            shift 2
            ;;
        --vocab-size=*)
            VOCAB_SIZE="${1#*=}"
            shift
            ;;
        --model-type)
            [ $# -ge 2 ] || die "--model-type needs a value"
            MODEL_TYPE="$2"
            shift 2
            ;;
        --model-type=*)
            MODEL_TYPE="${1#*=}"
            shift
            ;;
        --pairs)
            PAIRS=1
            shift
            ;;
        --like)
            [ $# -ge 2 ] || die "--like needs a data-bin folder with spm.model and dict.txt"
            LIKE_DIR="$2"
            shift 2
            ;;
        --bart)
            [ $# -ge 2 ] || die "--bart needs the folder with encoder.json, vocab.bpe, dict.txt"
            BART_DIR="$2"
            shift 2
            ;;
        -*) die "unknown option $1 (see --help)" ;;
        *)
            POSITIONAL+=("$1")
            shift
            ;;
    esac
done
if [ ${#POSITIONAL[@]} -ne 2 ]; then
    usage >&2
    exit 2
fi
RAW_DIR="${POSITIONAL[0]}"
NAME="${POSITIONAL[1]}"

[[ "$VOCAB_SIZE" =~ ^[1-9][0-9]*$ ]] ||
    die "--vocab-size must be a positive integer, got '$VOCAB_SIZE'"
case "$MODEL_TYPE" in unigram | bpe) ;; *) die "--model-type must be bpe or unigram" ;; esac
# NAME becomes a directory that is deleted and recreated, so keep it to a single plain component.
[[ "$NAME" =~ ^[A-Za-z0-9._-]+$ && "$NAME" != "." && "$NAME" != ".." ]] ||
    die "NAME must be a single folder name (letters, digits, . _ -), got '$NAME'"

[ -d "$RAW_DIR" ] || die "raw folder '$RAW_DIR' does not exist"
# the raw files, and the names their pieces get: one side, or a source and a target a split
SIDES=(txt)
[ -n "$PAIRS" ] && SIDES=(src tgt)
for split in "${SPLITS[@]}"; do
    for side in "${SIDES[@]}"; do
        f="$RAW_DIR/$split.$side"
        [ -f "$f" ] || die "missing $f (need {train,valid,test}.{${SIDES[*]// /,}} in $RAW_DIR)"
        grep -q '[^[:space:]]' "$f" || die "$f is empty"
    done
    if [ -n "$PAIRS" ]; then
        n_src=$(wc -l <"$RAW_DIR/$split.src")
        n_tgt=$(wc -l <"$RAW_DIR/$split.tgt")
        [ "$n_src" -eq "$n_tgt" ] ||
            die "$RAW_DIR/$split.src has $n_src lines but $RAW_DIR/$split.tgt has $n_tgt:" \
                "the sides pair line by line"
    fi
done

[ -z "$BART_DIR" ] || [ -z "$LIKE_DIR" ] ||
    die "--bart and --like both give a segmentation: choose one"
if [ -n "$LIKE_DIR" ]; then
    for f in spm.model dict.txt; do
        [ -f "$LIKE_DIR/$f" ] || die "--like $LIKE_DIR: missing $LIKE_DIR/$f"
    done
fi
if [ -n "$BART_DIR" ]; then
    for f in encoder.json vocab.bpe dict.txt; do
        [ -f "$BART_DIR/$f" ] || die "--bart $BART_DIR: missing $BART_DIR/$f"
    done
fi

if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO_ROOT/.venv/bin/python" ]; then
        PYTHON="$REPO_ROOT/.venv/bin/python"
    else
        PYTHON=python3
    fi
fi
PYTHON_PATH="$(command -v "$PYTHON")" || die "python interpreter '$PYTHON' not found"
# Made absolute (symlinks kept) because sentencepiece training runs from another folder.
[[ "$PYTHON_PATH" == /* ]] || PYTHON_PATH="$PWD/$PYTHON_PATH"
"$PYTHON_PATH" -c "import sentencepiece" 2>/dev/null ||
    die "$PYTHON_PATH cannot import sentencepiece (set PYTHON to the project's venv python)"

# invalid UTF-8 would stop fairseq-preprocess with a traceback naming no line, and an empty
# line would become an empty sentence: name the files and lines instead
RAW_FILES=()
for split in "${SPLITS[@]}"; do
    for side in "${SIDES[@]}"; do
        RAW_FILES+=("$RAW_DIR/$split.$side")
    done
done
"$PYTHON_PATH" "$REPO_ROOT/fairseq_vae/text/check_text.py" "${RAW_FILES[@]}" ||
    die "fix the lines above: the raw text must be UTF-8, one non-empty sentence per line"

# Prefer the fairseq-preprocess installed alongside the chosen interpreter so both agree on
# the fairseq version; the symlinked venv python is deliberately not resolved.
PREPROCESS="$(dirname "$PYTHON_PATH")/fairseq-preprocess"
if [ ! -x "$PREPROCESS" ]; then
    PREPROCESS="$(command -v fairseq-preprocess)" ||
        die "fairseq-preprocess not found next to $PYTHON_PATH nor on PATH"
fi

DATA_BIN="${DATA_BIN:-data-bin}"
DEST="$DATA_BIN/$NAME"
mkdir -p "$DATA_BIN"
# Build in a scratch folder next to DEST and move it into place only on success, so a failed
# run never leaves a half-written DEST (and fairseq-preprocess refuses an existing dict.txt).
WORK="$(mktemp -d "$DATA_BIN/.$NAME.tmp.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/pieces" "$WORK/out"

INPUTS=("${RAW_FILES[@]}")
OUTPUTS=()
for split in "${SPLITS[@]}"; do
    for side in "${SIDES[@]}"; do
        # fairseq-preprocess reads PREFIX.src and PREFIX.tgt for pairs, PREFIX alone otherwise
        if [ -n "$PAIRS" ]; then
            OUTPUTS+=("$WORK/pieces/$split.$side")
        else
            OUTPUTS+=("$WORK/pieces/$split")
        fi
    done
done
if [ -n "$BART_DIR" ]; then
    echo "== GPT-2 BPE with $BART_DIR/encoder.json and vocab.bpe"
    "$PYTHON_PATH" "$SCRIPT_DIR/gpt2_encode.py" --encoder-json "$BART_DIR/encoder.json" \
        --vocab-bpe "$BART_DIR/vocab.bpe" --inputs "${INPUTS[@]}" --outputs "${OUTPUTS[@]}"
    cp "$BART_DIR/encoder.json" "$BART_DIR/vocab.bpe" "$WORK/out/"
    SRCDICT=(--srcdict "$BART_DIR/dict.txt")
elif [ -n "$LIKE_DIR" ]; then
    echo "== sentencepiece with $LIKE_DIR/spm.model and its dict.txt"
    cp "$LIKE_DIR/spm.model" "$WORK/out/"
    [ ! -f "$LIKE_DIR/spm.vocab" ] || cp "$LIKE_DIR/spm.vocab" "$WORK/out/"
    "$PYTHON_PATH" "$SCRIPT_DIR/spm_encode.py" --model "$WORK/out/spm.model" \
        --inputs "${INPUTS[@]}" --outputs "${OUTPUTS[@]}"
    SRCDICT=(--srcdict "$LIKE_DIR/dict.txt")
else
    echo "== training sentencepiece ($MODEL_TYPE, vocab $VOCAB_SIZE) on the training text"
    # bos/eos/pad are disabled and unk is an ordinary id 0 so that encoded text holds only
    # ordinary pieces: fairseq's dictionary adds its own <s>, <pad>, </s> and <unk>.
    # The model records its input and output paths, so training runs inside the scratch folder on
    # fixed relative names, and on one thread, to keep spm.model byte-identical from run to run.
    for side in "${SIDES[@]}"; do cat "$RAW_DIR/train.$side"; done >"$WORK/train.txt"
    (cd "$WORK" && "$PYTHON_PATH" - train.txt spm "$VOCAB_SIZE" "$MODEL_TYPE") <<'EOF'
import sys

import sentencepiece as spm

train, prefix, vocab_size, model_type = sys.argv[1:]
spm.SentencePieceTrainer.train(
    input=train,
    model_prefix=prefix,
    vocab_size=int(vocab_size),
    model_type=model_type,
    character_coverage=1.0,
    hard_vocab_limit=False,
    bos_id=-1,
    eos_id=-1,
    pad_id=-1,
    unk_id=0,
    input_sentence_size=2000000,
    shuffle_input_sentence=True,
    num_threads=1,
    minloglevel=1,
)
EOF
    mv "$WORK/spm.model" "$WORK/spm.vocab" "$WORK/out/"
    echo "== encoding splits"
    "$PYTHON_PATH" "$SCRIPT_DIR/spm_encode.py" --model "$WORK/out/spm.model" \
        --inputs "${INPUTS[@]}" --outputs "${OUTPUTS[@]}"
    SRCDICT=()
fi
for piece in "${OUTPUTS[@]}"; do
    awk -v s="$(basename "$piece")" \
        '{n += NF} END {printf "   %-9s %7d lines, %.2f pieces/line\n", s, NR, n / NR}' "$piece"
done

echo "== fairseq-preprocess ($PREPROCESS)"
LAYOUT=(--only-source)
[ -n "$PAIRS" ] && LAYOUT=(--source-lang src --target-lang tgt --joined-dictionary)
"$PREPROCESS" "${LAYOUT[@]}" \
    --trainpref "$WORK/pieces/train" \
    --validpref "$WORK/pieces/valid" \
    --testpref "$WORK/pieces/test" \
    --destdir "$WORK/out" \
    --workers "${WORKERS:-2}" "${SRCDICT[@]}"
# The log records scratch paths and timestamps; dropping it keeps the output reproducible.
rm -f "$WORK/out/preprocess.log"

rm -rf "$DEST"
mv "$WORK/out" "$DEST"
echo "== wrote $DEST:"
ls -l "$DEST"
DICT="$DEST/dict.txt"
[ -n "$PAIRS" ] && DICT="$DEST/dict.src.txt"
echo "   fairseq dictionary entries: $(wc -l <"$DICT")"
