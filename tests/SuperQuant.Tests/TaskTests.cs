using System.Text.Json;
using SuperQuant.Core;
using SuperQuant.Core.Evaluation;
using SuperQuant.Core.Llama;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Models.Text;
using SuperQuant.Pipeline;
using SuperQuant.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Tests;

/// <summary>Zero-shot tasks: prompts built as lm-evaluation-harness builds them (hand-written expectations), and
/// every score checked against a direct log-likelihood computation (a plain loop over the model's logits).</summary>
[TestClass]
public sealed class TaskTests
{
    static readonly Dictionary<string, string> Lines = new()
    {
        ["arc_easy"] = """{"question": "Which is a gas?", "choices": {"text": ["ice", "steam", "rock"], "label": ["A", "B", "C"]}, "answerKey": "B"}""",
        ["hellaswag"] = """{"activity_label": "Baking", "ctx_a": "She mixes the flour.", "ctx_b": "then she [header] ADDS eggs", "endings": ["bakes it [title] done", "eats it"], "label": "0"}""",
        ["piqa"] = """{"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid", "label": 0}""",
        ["sciq"] = """{"support": "  Water boils at 100 C.", "question": "When does water boil?", "distractor1": "50 C", "distractor2": "0 C", "distractor3": "10 C", "correct_answer": "100 C"}""",
        ["winogrande"] = """{"sentence": "The cup fell off the table because _ was wobbly.", "option1": "the cup", "option2": "the table", "answer": "2"}""",
        ["lambada"] = """{"text": "He opened the door and saw his dog"}""",
    };

    static string Write(TempFolder dir, string task, params string[] lines)
    {
        string path = dir.File(task + ".jsonl");
        File.WriteAllText(path, string.Join("\n", lines) + "\n");
        return path;
    }

    [TestMethod]
    public void PromptsAreBuiltAsTheHarnessBuildsThem()
    {
        using var dir = new TempFolder();
        TaskDocument Doc(string task) => TaskFile.Read(Write(dir, task, Lines[task]), task).Single();

        var arc = Doc("arc_easy");
        Assert.AreEqual(1, arc.Gold);
        Assert.AreEqual(new TaskPrompt("Question: Which is a gas?\nAnswer:", " steam"), arc.Choices[1]);
        var hs = Doc("hellaswag");
        // ctx_b capitalized as Python's str.capitalize (rest lower case), [header] dropped, " [title]" -> ". ", double spaces collapsed.
        Assert.AreEqual(new TaskPrompt("Baking: She mixes the flour. Then she adds eggs", " bakes it. done"), hs.Choices[0]);
        Assert.AreEqual(0, hs.Gold);
        var piqa = Doc("piqa");
        Assert.AreEqual(new TaskPrompt("Question: Open a jar\nAnswer:", " eat the lid"), piqa.Choices[1]);
        var sciq = Doc("sciq");
        Assert.AreEqual((4, 3), (sciq.Choices.Count, sciq.Gold));
        Assert.AreEqual(new TaskPrompt("Water boils at 100 C.\nQuestion: When does water boil?\nAnswer:", " 100 C"), sciq.Choices[3]);
        var wg = Doc("winogrande");
        Assert.AreEqual(1, wg.Gold);
        Assert.AreEqual(new TaskPrompt("The cup fell off the table because the cup", " was wobbly."), wg.Choices[0]);
        Assert.AreEqual(new TaskPrompt("The cup fell off the table because the table", " was wobbly."), wg.Choices[1]);
        var lambada = Doc("lambada");
        Assert.AreEqual(new TaskPrompt("He opened the door and saw his", " dog"), lambada.Choices.Single());
    }

    [TestMethod]
    public void TaskFileErrorsNameTheFileLineAndField()
    {
        using var dir = new TempFolder();
        void Expect(string task, string[] lines, string fragment)
        {
            string path = Write(dir, task, lines);
            var e = Assert.ThrowsExactly<SuperQuantException>(() => TaskFile.Read(path, task));
            Assert.AreEqual(ErrorCodes.TaskFileInvalid, e.Code);
            StringAssert.Contains(e.Message, fragment);
            StringAssert.Contains(e.Message, path);
        }
        Expect("arc_easy", new[] { Lines["arc_easy"], "{not json" }, "(2): arc_easy: not a JSON object");
        Expect("arc_easy", new[] { Lines["arc_easy"].Replace("\"answerKey\": \"B\"", "\"answerKey\": \"Z\"") }, "answerKey 'Z'");
        Expect("piqa", new[] { """{"goal": "x", "sol1": "a", "label": 0}""" }, "field 'sol2' is missing");
        Expect("winogrande", new[] { """{"sentence": "no blank", "option1": "a", "option2": "b", "answer": "1"}""" }, "no _ blank");
        Expect("lambada", new[] { "", "  " }, "no lambada documents");
        Expect("hellaswag", new[] { Lines["hellaswag"].Replace("\"label\": \"0\"", "\"label\": \"7\"") }, "is not an index into 2 choices");
        Assert.ThrowsExactly<SuperQuantException>(() => TaskFile.Read(Write(dir, "x", "{}"), "mmlu"));
        // A device is not a task file (it would never end); a regular file that never ends a line is stopped at 1 MiB.
        var dev = Assert.ThrowsExactly<SuperQuantException>(() => TaskFile.Read("/dev/zero", "piqa"));
        Assert.AreEqual(ErrorCodes.TaskFileInvalid, dev.Code);
        StringAssert.Contains(dev.Message, "character device");
        var longLine = Assert.ThrowsExactly<SuperQuantException>(() => TaskFile.Read(Write(dir, "long", new string('x', (1 << 20) + 10)), "piqa"));
        Assert.AreEqual(ErrorCodes.TaskFileInvalid, longLine.Code);
        StringAssert.Contains(longLine.Message, "line longer than 1 MiB");
    }

    static (string Folder, LlamaModel Model) DemoWithTokenizer(TempFolder dir)
    {
        string ckpt = dir.File("ckpt");
        TinyCheckpointFactory.Write(ckpt, new TinyModelSpec { Vocab = 32000, Hidden = 32, Intermediate = 64, Layers = 1, Seed = 7 });
        File.Copy(SharedModels.Llama2Tokenizer, Path.Combine(ckpt, "tokenizer.model"));
        return (ckpt, ModelLoader.Load(ckpt));
    }

    /// <summary>Sum of log p(continuation) by a plain loop over the logits of one forward pass over context +
    /// continuation, and whether each continuation token is the row's argmax.</summary>
    static (double Ll, bool Greedy) Direct(LlamaModel model, ScoredRequest r)
    {
        int[] all = r.Context.Concat(r.Continuation).ToArray();
        using var logits = model.Forward(all);
        float[] flat = logits.data<float>().ToArray();
        int vocab = model.Config.VocabSize;
        double ll = 0;
        bool greedy = true;
        for (int k = 0; k < r.Continuation.Length; k++)
        {
            int row = r.Context.Length - 1 + k; // the logits that predict continuation token k
            double max = double.NegativeInfinity;
            int arg = 0;
            for (int v = 0; v < vocab; v++) if (flat[row * vocab + v] > max) { max = flat[row * vocab + v]; arg = v; }
            double sum = 0;
            for (int v = 0; v < vocab; v++) sum += Math.Exp(flat[row * vocab + v] - max);
            ll += flat[row * vocab + r.Continuation[k]] - max - Math.Log(sum);
            greedy &= arg == r.Continuation[k];
        }
        return (ll, greedy);
    }

    [TestMethod]
    public void ScoresEqualADirectLogLikelihoodComputation()
    {
        using var dir = new TempFolder();
        var (folder, model) = DemoWithTokenizer(dir);
        using (model)
        {
            var encode = Tokens.Encoder(folder, model.Config.VocabSize);
            string arc = Write(dir, "arc_easy", Lines["arc_easy"],
                """{"question": "What do plants need?", "choices": {"text": ["light", "noise", "plastic", "sand"], "label": ["1", "2", "3", "4"]}, "answerKey": "1"}""",
                """{"question": "Is the sun a star?", "choices": {"text": ["yes", "no"], "label": ["A", "B"]}, "answerKey": "A"}""");
            foreach (var (task, path) in new[] { ("arc_easy", arc), ("winogrande", Write(dir, "winogrande", Lines["winogrande"])),
                ("lambada", Write(dir, "lambada", Lines["lambada"], """{"text": "The cat sat on the mat"}""")) })
            {
                var text = TaskFile.Read(path, task);
                var docs = TaskRequests.Tokenize(text, encode, path);
                bool lastWord = task == "lambada";
                double correct = 0, correctNorm = 0, llSum = 0;
                foreach (var (doc, textDoc) in docs.Zip(text))
                {
                    var direct = doc.Requests.Select(r => Direct(model, r)).ToList();
                    foreach (var ((r, d), prompt) in doc.Requests.Zip(direct).Zip(textDoc.Choices))
                    {
                        // The split is the harness's: context ids are the context's own encoding, context + continuation the whole's.
                        CollectionAssert.AreEqual(encode(prompt.Context), r.Context, "context ids");
                        CollectionAssert.AreEqual(encode(prompt.Context + prompt.Continuation), r.Context.Concat(r.Continuation).ToArray(), "whole ids");
                        var (ll, greedy) = TaskScorer.LogLikelihood(t => model.Forward(t), r, 512);
                        Assert.AreEqual(d.Ll, ll, 1e-3 + 1e-5 * Math.Abs(d.Ll), task);
                        Assert.AreEqual(d.Greedy, greedy, task);
                    }
                    int best = direct.Select((d, i) => (d.Ll, i)).OrderByDescending(x => x.Ll).ThenBy(x => x.i).First().i;
                    int bestNorm = direct.Select((d, i) => (d.Ll / Math.Max(1, doc.Requests[i].ContinuationBytes),
                        i)).OrderByDescending(x => x.Item1).ThenBy(x => x.i).First().i;
                    correct += lastWord ? (direct[0].Greedy ? 1 : 0) : best == doc.Gold ? 1 : 0;
                    correctNorm += bestNorm == doc.Gold ? 1 : 0;
                    llSum += direct[0].Ll;
                }
                var score = TaskScorer.Score(task, lastWord, docs, t => model.Forward(t), 512);
                Assert.AreEqual(correct / docs.Count, score.Accuracy.Value, 1e-12, task);
                if (lastWord) Assert.AreEqual(Math.Exp(-llSum / docs.Count), score.Perplexity!.Value.Value, 1e-3 * score.Perplexity.Value.Value, task);
                else if (task != "winogrande") Assert.AreEqual(correctNorm / docs.Count, score.AccuracyNorm!.Value.Value, 1e-12, task);
            }
        }
    }

    /// <summary>Tasks on a layer-streamed model (memory: layers): the requests are run in right-padded batches, one
    /// read of the blocks per batch, and every log-likelihood equals the in-memory model's request by request.</summary>
    [TestMethod]
    public void ALayerStreamedModelScoresTasksInBatchesWithTheSameLikelihoods()
    {
        using var dir = new TempFolder();
        var (folder, model) = DemoWithTokenizer(dir);
        using (model)
        {
            var encode = Tokens.Encoder(folder, model.Config.VocabSize);
            string arc = Write(dir, "arc_easy", Lines["arc_easy"],
                """{"question": "What do plants need?", "choices": {"text": ["light", "noise", "plastic", "a very long answer about sand and stones"], "label": ["1", "2", "3", "4"]}, "answerKey": "1"}""",
                """{"question": "Is the sun a star?", "choices": {"text": ["yes", "no"], "label": ["A", "B"]}, "answerKey": "A"}""");
            var docs = TaskRequests.Tokenize(TaskFile.Read(arc, "arc_easy"), encode, arc);
            var requests = docs.SelectMany(d => d.Requests).ToList();
            Assert.IsTrue(requests.Select(r => TaskScorer.InputOf(r, 512).Length).Distinct().Count() > 1,
                "requests of different lengths: padding is exercised");
            using var streamed = ModelLoader.Load(folder, null, streamed: true);
            Assert.IsTrue(streamed.Weights.IsStreamed);
            var (logits, batches) = MemoryPlan.Requests(streamed, docs, 512);
            using (batches)
            {
                foreach (var r in requests)
                {
                    var (ll, greedy) = TaskScorer.LogLikelihood(logits, r, 512);
                    var (want, wantGreedy) = TaskScorer.LogLikelihood(t => model.Forward(t), r, 512);
                    Assert.AreEqual(want, ll, 1e-4 + 1e-5 * Math.Abs(want));
                    Assert.AreEqual(wantGreedy, greedy);
                }
                Assert.AreEqual(1, ((LayerMajorLogits)batches!).Passes, $"{requests.Count} requests in one batch: one read of the blocks");
            }
            var (again, batches2) = MemoryPlan.Requests(streamed, docs, 512);
            using (batches2)
                Assert.AreEqual(TaskScorer.Score("arc_easy", false, docs, t => model.Forward(t), 512), TaskScorer.Score("arc_easy", false, docs, again, 512));
        }
    }

    /// <summary>The same task scored through the CLI: our forward pass on the checkpoint, and llama.cpp on its F16
    /// GGUF (the runtime that ships it); the per-document log-likelihoods agree within fp16 rounding, so both give
    /// the same accuracy on a task whose choices are far apart.</summary>
    [TestMethod]
    public void EvalScoresATaskWithEitherRuntime()
    {
        using var dir = new TempFolder();
        var (folder, model) = DemoWithTokenizer(dir);
        using (model)
        {
            var export = new Models.Gguf.GgufExport
            {
                FileType = Manifest.GgufFileType.F16, Name = "m", Vocabulary = Models.Gguf.GgufVocabulary.FromCheckpoint(folder, model.Config),
            };
            Models.Gguf.GgufExporter.Write(dir.File("m.gguf"), model, export);
        }
        string piqa = Write(dir, "piqa", Lines["piqa"],
            """{"goal": "Dry a towel", "sol1": "hang it in the sun", "sol2": "put it in the freezer for a week", "label": 0}""");
        double Acc(string m, string memory = "auto")
        {
            var r = CliRunner.Run("eval", "-m", m, "--task", "piqa=" + piqa, "--json", "--device", "cpu", "--memory", memory);
            Assert.AreEqual(0, r.ExitCode, r.Output);
            using var json = JsonDocument.Parse(r.StdOut);
            var t = json.RootElement.GetProperty("tasks")[0];
            Assert.AreEqual(2, t.GetProperty("documents").GetInt32());
            return t.GetProperty("acc").GetDouble();
        }
        Assert.AreEqual(Acc(folder), Acc(dir.File("m.gguf")));
        Assert.AreEqual(Acc(folder), Acc(folder, "layers"), "the checkpoint streamed block by block, requests in batches");
        var bad = CliRunner.Run("eval", "-m", folder, "--task", "mmlu=" + piqa);
        Assert.AreEqual(3, bad.ExitCode, bad.Output);
        StringAssert.Contains(bad.StdErr, "--task 'mmlu=");
    }

    /// <summary>The accuracy gate end to end: the original model's task accuracy (the baseline) and each shipped
    /// file's, measured by its runtime (packed: our loader; GGUF: llama.cpp), are in the report; the baseline equals
    /// an in-process score of the checkpoint, and the gate's verdict is the drop compared with max_drop.</summary>
    [TestMethod]
    [TestCategory(TestCategories.Slow)]
    public void TheGateScoresTasksOnEveryArtifact()
    {
        using var dir = new TempFolder();
        var (folder, model) = DemoWithTokenizer(dir);
        string piqa = Write(dir, "piqa", Lines["piqa"],
            """{"goal": "Dry a towel", "sol1": "hang it in the sun", "sol2": "put it in the freezer for a week", "label": 0}""",
            """{"goal": "Cut bread", "sol1": "use a knife", "sol2": "use a spoon", "label": 0}""");
        double baseline;
        using (model)
        {
            var docs = TaskRequests.Tokenize(TaskFile.Read(piqa, "piqa"), Tokens.Encoder(folder, 32000), piqa);
            baseline = TaskScorer.Score("piqa", false, docs, t => model.Forward(t), 64).Accuracy.Value;
            SuperQuant.Models.Text.TokenIdFile.Write(dir.File("ids.txt"), Sampler.Generate(model, new[] { 1 }, 79, 1.0, seed: 3));
        }
        // "streamed": the same gate with memory: layers (tasks scored in batches, one read of the blocks per batch).
        foreach (var (drop, name) in new[] { (100.0, "loose"), (0.0, "strict"), (100.0, "streamed") })
        {
            File.WriteAllText(dir.File("quantize.yaml"), $$"""
                version: 1
                device: cpu
                memory: {{(name == "streamed" ? "layers" : "auto")}}
                models:
                  - id: demo
                    checkpoint: ckpt
                    output: models/{{name}}.sqpk.safetensors
                    method: rtn
                    weight_bits: 8
                    block_size: 32
                    evaluation_tokens: ids.txt
                    context: 64
                    export: [packed, {gguf: q8_0}]
                    tasks: {piqa: piqa.jsonl}
                    gate:
                      metric: accuracy
                      max_drop: {{drop}}
                """);
            var r = CliRunner.Run("gate", "--manifest", dir.File("quantize.yaml"), "--report-dir", dir.File("obj-" + name));
            if (name == "streamed") StringAssert.Contains(r.Output, "demo: layer-streamed (memory: layers)");
            using var report = JsonDocument.Parse(File.ReadAllText(dir.File($"obj-{name}/superquant-report.json")));
            var artifacts = report.RootElement.GetProperty("models")[0].GetProperty("artifacts");
            Assert.AreEqual(2, artifacts.GetArrayLength());
            bool anyDrop = false;
            foreach (var a in artifacts.EnumerateArray())
            {
                var t = a.GetProperty("tasks")[0];
                Assert.AreEqual("piqa", t.GetProperty("task").GetString());
                Assert.AreEqual(3, t.GetProperty("documents").GetInt32());
                Assert.AreEqual(baseline, t.GetProperty("baseline").GetDouble(), 1e-12, "the baseline is the original checkpoint's accuracy");
                double acc = t.GetProperty("accuracy").GetDouble();
                bool passed = acc >= baseline - drop / 100 - 1e-12;
                Assert.AreEqual(passed, t.GetProperty("passed").GetBoolean());
                anyDrop |= !passed;
            }
            CollectionAssert.AreEquivalent(new[] { "llama.cpp", "superquant" },
                artifacts.EnumerateArray().Select(a => a.GetProperty("engine").GetString()).ToArray());
            Assert.AreEqual(anyDrop ? 1 : 0, r.ExitCode, r.Output);
        }
    }
}
