/**
 * The bad-input table: each case runs a task's `main` in-process with bad flags or bad files and asserts
 * exit code 1, one error line `<task>: …` that names the flag, file or value (the case's pattern), no stack
 * trace, and nothing half-written: the case's output path does not exist afterwards. Grouped by task; add a
 * row to grow it.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { needsGpu } from "../gpu.ts";
import { TARGET } from "../train/fixtures.ts";
import { wordLevelTokenizerJson } from "../../lib/data/tokenizer.ts";
import { main as prepareData } from "../../tasks/prepare_data.ts";
import { main as inspectData } from "../../tasks/inspect_data.ts";
import { main as generate } from "../../tasks/generate.ts";
import { main as trainOnline } from "../../tasks/train_online.ts";
import { main as trainOffline } from "../../tasks/train_offline.ts";
import { main as prepareHiddenStates } from "../../tasks/prepare_hidden_states.ts";
import { main as exportTask } from "../../tasks/export.ts";
import { main as evalTask } from "../../tasks/eval.ts";
import { main as convertLlama2c } from "../../tasks/convert_llama2c.ts";
import { runMain } from "./run_main.ts";

const MAINS = {
  "prepare-data": prepareData,
  "inspect-data": inspectData,
  "generate": generate,
  "train-online": trainOnline,
  "train-offline": trainOffline,
  "prepare-hidden-states": prepareHiddenStates,
  "export": exportTask,
  "eval": evalTask,
  "convert-llama2c": convertLlama2c,
} as const;

type Task = keyof typeof MAINS;

/** One row: a task, its arguments, what the error must match, and a path the failed run must not create. */
interface Case {
  task: Task;
  args: string[];
  expect: RegExp;
  output?: string;
}

/** The fixture files the cases point at (paths under one temp dir). */
interface Fixture {
  root: string;
  /** A good tiny target: config, weights, word-level tokenizer. */
  target: string;
  /** Good pre-tokenized data (8 rows). */
  data: string;
  /** A regular file, where a directory is expected. */
  file: string;
  /** Paths to bad files by kind. */
  bad: Record<string, string>;
}

async function makeFixture(): Promise<Fixture> {
  const root = await Deno.makeTempDir({ prefix: "eaglet-bad-" });
  const target = join(root, "target");
  await Deno.mkdir(target);
  for (const f of ["config.json", "model.safetensors"]) await Deno.copyFile(join(TARGET, f), join(target, f));
  await Deno.writeTextFile(join(target, "tokenizer.json"), wordLevelTokenizerJson(256));
  const row = (i: number) =>
    JSON.stringify({ id: `r${i}`, input_ids: [3, 4, 5, 6, 7, 8], loss_mask: [0, 0, 1, 1, 1, 1] });
  const data = join(root, "data.jsonl");
  await Deno.writeTextFile(data, Array.from({ length: 8 }, (_, i) => row(i)).join("\n") + "\n");
  const file = join(root, "a-file");
  await Deno.writeTextFile(file, "not a directory\n");
  const w = async (name: string, text: string | Uint8Array) => {
    const p = join(root, name);
    if (typeof text === "string") await Deno.writeTextFile(p, text);
    else await Deno.writeFile(p, text);
    return p;
  };
  const targetVariant = async (name: string, config: string | null, weights: Uint8Array | null) => {
    const dir = join(root, name);
    await Deno.mkdir(dir);
    if (config !== null) await Deno.writeTextFile(join(dir, "config.json"), config);
    if (weights !== null) await Deno.writeFile(join(dir, "model.safetensors"), weights);
    await Deno.writeTextFile(join(dir, "tokenizer.json"), wordLevelTokenizerJson(256));
    return dir;
  };
  const config = await Deno.readTextFile(join(TARGET, "config.json"));
  const weights = await Deno.readFile(join(TARGET, "model.safetensors"));
  const cfg = JSON.parse(config);
  const bad: Record<string, string> = {
    empty: await w("empty.jsonl", ""),
    malformed: await w("malformed.jsonl", row(0) + '\n{"id": 2,\n'),
    malformedConv: await w(
      "malformed-conv.jsonl",
      '{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}\n{"id": 2,\n',
    ),
    conversations: await w(
      "conv.jsonl",
      '{"conversations": [{"from": "human", "value": "a b"}, {"from": "gpt", "value": "c d"}]}\n',
    ),
    shape: await w("shape.jsonl", '{"id": "x", "input_ids": [1, 2, 3], "loss_mask": [1, 1]}\n'),
    roleless: await w("roleless.jsonl", '{"conversations": [{"content": "hi"}]}\n'),
    negative: await w("negative.jsonl", '{"input_ids": [1, -2], "loss_mask": [1, 1]}\n'),
    outOfVocab: await w("oov.jsonl", '{"input_ids": [1, 99999], "loss_mask": [1, 1]}\n'),
    array: await w("array.jsonl", "[1, 2, 3]\n"),
    extension: await w("data.csv", "a,b\n"),
    yaml: await w("run.yaml", "training:\n  batch_size: [\n"),
    yamlUnknown: await w("unknown.yaml", "no_such_key: 1\n"),
    yamlType: await w("type.yaml", "training:\n  batch_size: many\n"),
    draftJson: await w("draft-bad.json", "{ not json"),
    draftOther: await w(
      "draft-other.json",
      JSON.stringify({
        architectures: ["LlamaForCausalLMEagle3"],
        hidden_size: 64,
        intermediate_size: 96,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        vocab_size: 256,
        draft_vocab_size: 32,
        max_position_embeddings: 128,
        rms_norm_eps: 1e-6,
      }),
    ),
    template: await w("template.jinja", "{% for m in messages %}{{ m.content "),
    llama2c: await w("model.bin", new Uint8Array(10)),
    truncatedWeights: await targetVariant("t-truncated", config, weights.slice(0, weights.length - 100)),
    garbageWeights: await targetVariant("t-garbage", config, new Uint8Array(64).fill(7)),
    noWeights: await targetVariant("t-noweights", config, null),
    noConfig: await targetVariant("t-noconfig", null, weights),
    configJson: await targetVariant("t-configjson", "{ oops", weights),
    configField: await targetVariant(
      "t-configfield",
      JSON.stringify({ ...cfg, hidden_size: undefined }),
      weights,
    ),
    configArch: await targetVariant(
      "t-configarch",
      JSON.stringify({ ...cfg, architectures: ["GPTNeoXForCausalLM"] }),
      weights,
    ),
    configShape: await targetVariant("t-configshape", JSON.stringify({ ...cfg, hidden_size: 48 }), weights),
    configLayers: await targetVariant(
      "t-configlayers",
      JSON.stringify({ ...cfg, num_hidden_layers: 12 }),
      weights,
    ),
  };
  return { root, target, data, file, bad };
}

/** The table, built over the fixture's paths. */
function cases(f: Fixture): Case[] {
  const o = (name: string) => join(f.root, "out", name);
  const under = join(f.file, "sub");
  const T = f.target, D = f.data, B = f.bad;
  const train = (extra: string[]) => ["--target-model-path", T, "--train-data-path", D, ...extra];
  const trainOut = (name: string, extra: string[]) => [...train(["--output-dir", o(name)]), ...extra];
  const phs = (extra: string[]) => ["--target-model-path", T, "--data-path", D, ...extra];
  const ev = (
    extra: string[],
  ) => ["--target-model-path", T, "--draft-model-path", "random", "--data-path", D, ...extra];
  const gen = (extra: string[]) => ["--model-path", T, "--prompt-ids", "1", ...extra];
  const c = (task: Task, args: string[], expect: RegExp, output?: string): Case => ({
    task,
    args,
    expect,
    output,
  });
  return [
    // prepare-data
    c("prepare-data", [], /--dataset/),
    c("prepare-data", ["--dataset", "nope"], /--dataset.*nope/),
    c("prepare-data", ["--dataset", "sharegpt", "--bogus"], /--bogus/),
    c(
      "prepare-data",
      ["--dataset", "sharegpt", "--input", join(f.root, "missing.jsonl"), "--output-path", o("p1")],
      /missing\.jsonl/,
      o("p1"),
    ),
    c(
      "prepare-data",
      ["--dataset", "sharegpt", "--input", B.malformedConv, "--output-path", o("p2")],
      /malformed-conv\.jsonl:2/,
      o("p2"),
    ),
    c(
      "prepare-data",
      ["--dataset", "sharegpt", "--input", B.extension, "--output-path", o("p3")],
      /data\.csv/,
      o("p3"),
    ),
    c(
      "prepare-data",
      ["--dataset", "sharegpt", "--input", D, "--sample-size", "0", "--output-path", o("p4")],
      /--sample-size/,
      o("p4"),
    ),
    c(
      "prepare-data",
      ["--dataset", "sharegpt", "--input", D, "--sample-size", "-4", "--output-path", o("p5")],
      /--sample-size.*-4/,
      o("p5"),
    ),
    c(
      "prepare-data",
      ["--dataset", "sharegpt", "--input", D, "--max-length", "abc", "--output-path", o("p6")],
      /--max-length.*abc/,
      o("p6"),
    ),
    c(
      "prepare-data",
      ["--dataset", "sharegpt", "--input", D, "--seed", "1.5", "--output-path", o("p7")],
      /--seed.*1\.5/,
      o("p7"),
    ),
    c(
      "prepare-data",
      [
        "--dataset",
        "sharegpt",
        "--input",
        D,
        "--tokenizer",
        join(f.root, "no-tok"),
        "--output-path",
        o("p8"),
      ],
      /no-tok/,
      o("p8"),
    ),
    c(
      "prepare-data",
      [
        "--dataset",
        "sharegpt",
        "--input",
        D,
        "--tokenizer",
        T,
        "--chat-template",
        "nope",
        "--output-path",
        o("p9"),
      ],
      /--chat-template.*nope/,
      o("p9"),
    ),
    c(
      "prepare-data",
      [
        "--dataset",
        "sharegpt",
        "--input",
        D,
        "--tokenizer",
        T,
        "--chat-template-file",
        join(f.root, "none.jinja"),
        "--output-path",
        o("p10"),
      ],
      /none\.jinja/,
      o("p10"),
    ),
    c("prepare-data", ["--dataset", "sharegpt", "--input", D, "--output-path", under], /a-file/),
    c("prepare-data", ["--dataset", "sharegpt", "--input", D, "--output-path", ""], /--output-path/),
    c(
      "prepare-data",
      ["--dataset", "sharegpt", "--input", D, "--draft-vocab-size", "0", "--output-path", o("p11")],
      /--draft-vocab-size/,
      o("p11"),
    ),
    c(
      "prepare-data",
      [
        "--dataset",
        "sharegpt",
        "--input",
        B.conversations,
        "--vocab-mapping",
        join(f.root, "none.safetensors"),
        "--tokenizer",
        T,
        "--output-path",
        o("p12"),
      ],
      /none\.safetensors/,
      o("p12"),
    ),
    c(
      "prepare-data",
      ["--dataset", "custom", "--input", B.roleless, "--output-path", o("p13")],
      /roleless\.jsonl:1.*role/,
      o("p13"),
    ),
    c(
      "prepare-data",
      ["--dataset", "custom", "--input", B.array, "--output-path", o("p14")],
      /array\.jsonl:1/,
      o("p14"),
    ),
    c(
      "prepare-data",
      ["--dataset", "sharegpt", "--input", f.root + "/*.nothing", "--output-path", o("p15")],
      /nothing/,
      o("p15"),
    ),
    // inspect-data
    c("inspect-data", [], /--input/),
    c("inspect-data", ["--input", D], /--tokenizer/),
    c("inspect-data", ["--input", join(f.root, "missing.jsonl"), "--tokenizer", T], /missing\.jsonl/),
    c("inspect-data", ["--input", B.malformed, "--index", "1", "--tokenizer", T], /malformed\.jsonl:2/),
    c("inspect-data", ["--input", D, "--index", "99", "--tokenizer", T], /--index.*99|99.*8/),
    c("inspect-data", ["--input", D, "--index", "-1", "--tokenizer", T], /--index.*-1/),
    c("inspect-data", ["--input", D, "--id", "nope", "--tokenizer", T], /nope/),
    c("inspect-data", ["--input", D, "--max-length", "0", "--tokenizer", T], /--max-length/),
    c("inspect-data", ["--input", D, "--tokenizer", join(f.root, "no-tok")], /no-tok/),
    c("inspect-data", ["--input", B.empty, "--tokenizer", T], /empty\.jsonl/),
    c("inspect-data", ["--input", B.shape, "--tokenizer", T], /shape\.jsonl:1.*loss_mask/),
    c("inspect-data", ["--input", B.negative, "--tokenizer", T], /negative\.jsonl:1.*input_ids\[1\]/),
    c("inspect-data", ["--input", D, "--html", join(under, "x.html"), "--tokenizer", T], /a-file/),
    // generate
    c("generate", [], /--model-path/),
    c("generate", ["--model-path", T], /--prompt/),
    c("generate", gen(["--max-new-tokens", "0"]), /--max-new-tokens/),
    c("generate", gen(["--max-new-tokens", "-4"]), /--max-new-tokens.*-4/),
    c("generate", gen(["--temperature", "-1"]), /--temperature.*-1/),
    c("generate", gen(["--top-p", "0"]), /--top-p/),
    c("generate", gen(["--top-p", "1.5"]), /--top-p.*1\.5/),
    c("generate", ["--model-path", T, "--prompt-ids", "1,x"], /--prompt-ids.*x/),
    c("generate", ["--model-path", T, "--prompt-ids", "99999"], /99999/),
    c("generate", ["--model-path", join(f.root, "nowhere"), "--prompt-ids", "1"], /nowhere/),
    c("generate", ["--model-path", B.noConfig, "--prompt-ids", "1"], /t-noconfig.*config\.json/),
    c("generate", ["--model-path", B.configJson, "--prompt-ids", "1"], /t-configjson.*config\.json/),
    c("generate", ["--model-path", B.configField, "--prompt-ids", "1"], /hidden_size/),
    c("generate", ["--model-path", B.configArch, "--prompt-ids", "1"], /GPTNeoXForCausalLM/),
    c("generate", ["--model-path", B.noWeights, "--prompt-ids", "1"], /t-noweights.*model\.safetensors/),
    c(
      "generate",
      ["--model-path", B.truncatedWeights, "--prompt-ids", "1"],
      /t-truncated.*model\.safetensors/,
    ),
    c("generate", ["--model-path", B.garbageWeights, "--prompt-ids", "1"], /t-garbage.*model\.safetensors/),
    c("generate", ["--model-path", B.configShape, "--prompt-ids", "1"], /t-configshape.*(shape|48)/),
    c("generate", ["--model-path", B.configLayers, "--prompt-ids", "1"], /model\.layers\.8|12/),
    c("generate", ["--model-path", f.file, "--prompt-ids", "1"], /a-file/),
    // train-online
    c("train-online", [], /--target-model-path/),
    c("train-online", ["--target-model-path", T, "--output-dir", o("t0")], /--train-data-path/, o("t0")),
    c("train-online", train([]), /--output-dir/),
    c("train-online", trainOut("t1", ["--batch-size", "0"]), /--batch-size/, o("t1")),
    c("train-online", trainOut("t2", ["--batch-size", "-4"]), /--batch-size.*-4/, o("t2")),
    c("train-online", trainOut("t3", ["--learning-rate", "abc"]), /--learning-rate.*abc/, o("t3")),
    c("train-online", trainOut("t4", ["--learning-rate", "NaN"]), /--learning-rate.*NaN/, o("t4")),
    c("train-online", trainOut("t5", ["--learning-rate", "1e999"]), /--learning-rate/, o("t5")),
    c("train-online", trainOut("t6", ["--num-epochs", "0"]), /--num-epochs/, o("t6")),
    c("train-online", trainOut("t7", ["--ttt-length", "0"]), /--ttt-length/, o("t7")),
    c("train-online", trainOut("t8", ["--warmup-ratio", "2"]), /--warmup-ratio.*2/, o("t8")),
    c("train-online", trainOut("t9", ["--max-length", "1"]), /--max-length|max_length/, o("t9")),
    c("train-online", trainOut("t10", ["--lk-loss-type", "beta"]), /--lk-loss-type.*beta/, o("t10")),
    c("train-online", trainOut("t11", ["--export-dtype", "f64"]), /--export-dtype.*f64/, o("t11")),
    c("train-online", trainOut("t12", ["--aux-layers", "1,2"]), /--aux-layers/, o("t12")),
    c("train-online", trainOut("t13", ["--aux-layers", "0,1,9"]), /layer 9/, o("t13")),
    c("train-online", trainOut("t14", ["--aux-layers", "3,2,1"]), /aux layers \[3,2,1\]/, o("t14")),
    c("train-online", trainOut("t15", ["--draft-vocab-size", "300"]), /300.*256/, o("t15")),
    c("train-online", trainOut("t16", ["--draft-model-config", B.draftJson]), /draft-bad\.json/, o("t16")),
    c("train-online", trainOut("t17", ["--draft-model-config", B.draftOther]), /hidden_size 64/, o("t17")),
    c("train-online", trainOut("t18", ["--resume", "--resume-from", o("x")]), /--resume/, o("t18")),
    c("train-online", trainOut("t19", ["--resume-from", join(f.root, "nowhere")]), /nowhere/, o("t19")),
    c(
      "train-online",
      trainOut("t20", ["--resume-allow-changed", "bogus"]),
      /--resume-allow-changed.*bogus/,
      o("t20"),
    ),
    c("train-online", trainOut("t21", ["--report-to", "wandb"]), /--report-to.*wandb/, o("t21")),
    c("train-online", trainOut("t22", ["--config", join(f.root, "none.yaml")]), /none\.yaml/, o("t22")),
    c("train-online", trainOut("t23", ["--config", B.yaml]), /run\.yaml/, o("t23")),
    c("train-online", trainOut("t24", ["--config", B.yamlUnknown]), /no_such_key/, o("t24")),
    c("train-online", trainOut("t25", ["--config", B.yamlType]), /batch_size.*many/, o("t25")),
    c(
      "train-online",
      ["--target-model-path", T, "--train-data-path", B.empty, "--output-dir", o("t26")],
      /empty\.jsonl/,
      o("t26"),
    ),
    c(
      "train-online",
      ["--target-model-path", T, "--train-data-path", B.malformed, "--output-dir", o("t27")],
      /malformed\.jsonl:2/,
      o("t27"),
    ),
    c(
      "train-online",
      ["--target-model-path", T, "--train-data-path", B.outOfVocab, "--output-dir", o("t28")],
      /99999/,
      o("t28"),
    ),
    c(
      "train-online",
      [
        "--target-model-path",
        T,
        "--train-data-path",
        join(f.root, "missing.jsonl"),
        "--output-dir",
        o("t29"),
      ],
      /missing\.jsonl/,
      o("t29"),
    ),
    c(
      "train-online",
      ["--target-model-path", B.noConfig, "--train-data-path", D, "--output-dir", o("t30")],
      /t-noconfig/,
      o("t30"),
    ),
    c(
      "train-online",
      ["--target-model-path", B.configJson, "--train-data-path", D, "--output-dir", o("t31")],
      /t-configjson/,
      o("t31"),
    ),
    c(
      "train-online",
      trainOut("t32", ["--eval-data-path", join(f.root, "missing-eval.jsonl")]),
      /missing-eval\.jsonl/,
      o("t32"),
    ),
    c("train-online", train(["--output-dir", ""]), /--output-dir/),
    c("train-online", train(["--output-dir", f.file]), /a-file/),
    c("train-online", train(["--output-dir", under]), /a-file/),
    c("train-online", trainOut("t33", ["--batch-size", "16"]), /16/, o("t33")),
    c(
      "train-online",
      trainOut("t34", ["--vocab-mapping-path", join(f.root, "none.safetensors")]),
      /none\.safetensors/,
      o("t34"),
    ),
    c("train-online", trainOut("t35", ["--embedding-key", "no.such.tensor"]), /no\.such\.tensor/, o("t35")),
    // train-offline
    c("train-offline", train(["--output-dir", o("f1")]), /--train-hidden-states-path/, o("f1")),
    c(
      "train-offline",
      [
        "--target-model-path",
        T,
        "--train-hidden-states-path",
        join(f.root, "nofeat"),
        "--output-dir",
        o("f2"),
      ],
      /nofeat/,
      o("f2"),
    ),
    c(
      "train-offline",
      ["--target-model-path", T, "--train-hidden-states-path", T, "--output-dir", o("f3")],
      /not a features directory/,
      o("f3"),
    ),
    // prepare-hidden-states
    c("prepare-hidden-states", [], /--target-model-path|--data-path|--output-path/),
    c("prepare-hidden-states", phs(["--output-path", o("h1"), "--shard", "3/2"]), /--shard 3\/2/, o("h1")),
    c("prepare-hidden-states", phs(["--output-path", o("h2"), "--shard", "x"]), /--shard.*x/, o("h2")),
    c("prepare-hidden-states", phs(["--output-path", o("h3"), "--batch-size", "0"]), /--batch-size/, o("h3")),
    c(
      "prepare-hidden-states",
      phs(["--output-path", o("h4"), "--aux-format", "int3"]),
      /--aux-format.*int3/,
      o("h4"),
    ),
    c(
      "prepare-hidden-states",
      phs(["--output-path", o("h5"), "--teacher-format", "nope"]),
      /--teacher-format.*nope/,
      o("h5"),
    ),
    c("prepare-hidden-states", phs(["--output-path", o("h6"), "--topk", "0"]), /--topk/, o("h6")),
    c(
      "prepare-hidden-states",
      phs(["--output-path", o("h6b"), "--target-memory-budget", "12 parsecs"]),
      /--target-memory-budget.*12 parsecs/,
      o("h6b"),
    ),
    c(
      "prepare-hidden-states",
      phs(["--output-path", o("h6c"), "--device-memory", "4KiB"]),
      /memory plan: the run needs .* the device has 4\.0 KiB/,
      o("h6c"),
    ),
    c(
      "prepare-hidden-states",
      phs(["--output-path", o("h7"), "--aux-layers", "0,1,9"]),
      /aux layer 9/,
      o("h7"),
    ),
    c(
      "prepare-hidden-states",
      ["--target-model-path", T, "--data-path", B.malformed, "--output-path", o("h8")],
      /malformed\.jsonl:2/,
      o("h8"),
    ),
    c(
      "prepare-hidden-states",
      ["--target-model-path", B.garbageWeights, "--data-path", D, "--output-path", o("h9")],
      /t-garbage/,
      o("h9"),
    ),
    c("prepare-hidden-states", phs(["--output-path", under]), /a-file/),
    c(
      "prepare-hidden-states",
      phs(["--output-path", o("h10"), "--group-size", "0"]),
      /--group-size/,
      o("h10"),
    ),
    // export
    c("export", [], /--checkpoint|--check/),
    c("export", ["--check", join(f.root, "nowhere")], /nowhere/),
    c("export", ["--check", T], /architectures|LlamaForCausalLMEagle3/),
    c("export", ["--check", f.file], /a-file/),
    c("export", ["--checkpoint", join(f.root, "nowhere"), "--output-dir", o("e1")], /nowhere/, o("e1")),
    c("export", ["--checkpoint", T, "--output-dir", o("e2")], /training_state|checkpoint/, o("e2")),
    c("export", ["--checkpoint", T, "--output-dir", o("e3"), "--dtype", "f64"], /--dtype.*f64/, o("e3")),
    c("export", ["--checkpoint", T, "--output-dir", o("e4"), "--format", "onnx"], /--format.*onnx/, o("e4")),
    c(
      "export",
      ["--checkpoint", T, "--output-dir", o("e5"), "--speculative-tokens", "0"],
      /--speculative-tokens/,
      o("e5"),
    ),
    // eval
    c("eval", [], /--target-model-path|--draft-model-path|--data-path/),
    c("eval", ev(["--output-dir", o("v1"), "--num-steps", "0"]), /--num-steps/, o("v1")),
    c("eval", ev(["--output-dir", o("v2"), "--topk", "0"]), /--topk/, o("v2")),
    c("eval", ev(["--output-dir", o("v3"), "--max-prompt-len", "0"]), /--max-prompt-len/, o("v3")),
    c("eval", ev(["--output-dir", o("v4"), "--num-samples", "0"]), /--num-samples/, o("v4")),
    c("eval", ev(["--output-dir", o("v5"), "--temperature", "-1"]), /--temperature.*-1/, o("v5")),
    c("eval", ev(["--output-dir", o("v6"), "--max-new-tokens", "0"]), /--max-new-tokens/, o("v6")),
    c("eval", ev(["--output-dir", under]), /a-file/),
    c("eval", ev(["--output-dir", ""]), /--output-dir/),
    c(
      "eval",
      [
        "--target-model-path",
        T,
        "--draft-model-path",
        join(f.root, "nodraft"),
        "--data-path",
        D,
        "--output-dir",
        o("v7"),
      ],
      /nodraft/,
      o("v7"),
    ),
    c(
      "eval",
      ["--target-model-path", T, "--draft-model-path", T, "--data-path", D, "--output-dir", o("v8")],
      /architectures|LlamaForCausalLMEagle3|draft tensor/,
      o("v8"),
    ),
    c(
      "eval",
      [
        "--target-model-path",
        T,
        "--draft-model-path",
        "random",
        "--data-path",
        B.malformed,
        "--output-dir",
        o("v9"),
      ],
      /malformed\.jsonl:2/,
      o("v9"),
    ),
    c(
      "eval",
      [
        "--target-model-path",
        T,
        "--draft-model-path",
        "random",
        "--data-path",
        B.empty,
        "--output-dir",
        o("v10"),
      ],
      /empty\.jsonl/,
      o("v10"),
    ),
    // convert-llama2c
    c("convert-llama2c", [], /--checkpoint/),
    c(
      "convert-llama2c",
      ["--checkpoint", join(f.root, "none.bin"), "--tokenizer", D, "--output-dir", o("l1")],
      /none\.bin/,
      o("l1"),
    ),
    c(
      "convert-llama2c",
      ["--checkpoint", B.llama2c, "--tokenizer", D, "--output-dir", o("l2")],
      /model\.bin|data\.jsonl/,
      o("l2"),
    ),
    c("convert-llama2c", ["--checkpoint", B.llama2c], /--tokenizer/),
    c(
      "convert-llama2c",
      ["--checkpoint", B.llama2c, "--tokenizer", join(f.root, "none.tok"), "--output-dir", o("l3")],
      /none\.tok|model\.bin/,
      o("l3"),
    ),
  ]; // deno-fmt-ignore
}

/** Everything under `dir` whose name marks an unfinished atomic write. */
function temporaries(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of Deno.readDirSync(d)) {
      if (e.name.includes(".tmp-")) out.push(join(d, e.name));
      if (e.isDirectory) walk(join(d, e.name));
    }
  };
  walk(dir);
  return out;
}

Deno.test(
  { name: "bad inputs: exit 1, one line naming the flag or file, nothing half-written", ...needsGpu },
  async () => {
    const f = await makeFixture();
    const failures: string[] = [];
    const table = cases(f);
    // Defaults relative to the working directory (./cache, out/eval) land in the fixture, not the checkout.
    const cwd = Deno.cwd();
    Deno.chdir(f.root);
    try {
      for (const k of table) {
        const { code, errors } = await runMain(MAINS[k.task], k.args);
        const mine = errors.filter((l) => l.startsWith(`${k.task}: `));
        const why = code !== 1
          ? `exit ${code}`
          : mine.length !== 1
          ? `${mine.length} error lines: ${JSON.stringify(errors.slice(-3))}`
          : !k.expect.test(mine[0])
          ? `message does not match ${k.expect}: ${mine[0]}`
          : errors.some((l) => /^\s+at /.test(l))
          ? "a stack trace"
          : k.output && (await Deno.stat(k.output).then(() => true, () => false))
          ? `${k.output} was left behind`
          : null;
        if (why) {
          failures.push(
            `${k.task} ${k.args.map((a) => a.replace(f.root, "<root>")).join(" ")}: ${why}`,
          );
        }
      }
      const left = temporaries(f.root);
      assert.deepEqual(left, [], "temporary files left");
      assert.ok(table.length >= 100, `${table.length} cases`);
      assert.deepEqual(
        failures,
        [],
        `${failures.length} of ${table.length} cases failed:\n${failures.join("\n")}`,
      );
    } finally {
      Deno.chdir(cwd);
      await Deno.remove(f.root, { recursive: true });
    }
  },
);
