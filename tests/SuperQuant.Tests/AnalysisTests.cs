using System.Text.Json;
using SuperQuant.Cli.Reports;
using SuperQuant.Core.Evaluation;
using SuperQuant.Core.Llama;
using SuperQuant.Core.SuperWeights;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Models.Text;
using SuperQuant.Tests.Support;

namespace SuperQuant.Tests;

[TestClass]
public sealed class AnalysisTests
{
    static readonly int[] Prompt = { 1, 7, 22, 5, 40, 13, 2, 9 };

    static string PlantedCheckpoint(TempFolder dir, int layer = 1, int row = 17, int col = 45)
        => Planted(dir, new TinyModelSpec { Layers = 3 }, layer, row, col);

    /// <summary>A checkpoint with a super weight planted at (layer, row, col), after <paramref name="edit"/> changed
    /// its weights (by Hugging Face name, row-major).</summary>
    static string Planted(TempFolder dir, TinyModelSpec spec, int layer = 1, int row = 17, int col = 45, Action<Dictionary<string, float[]>>? edit = null)
    {
        var w = TinyCheckpointFactory.RandomWeights(spec);
        SuperWeightPlanter.BoostEmbeddingChannel(w, spec);
        SuperWeightPlanter.Plant(w, spec, layer, row, col);
        edit?.Invoke(w);
        string folder = Path.Combine(dir.Path, "model");
        TinyCheckpointFactory.Write(folder, spec, w);
        return folder;
    }

    static int[] Stream(int n, int seed = 5)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => rng.Next(48)).ToArray();
    }

    [TestMethod]
    public void AblationsBehaveAsThePaperDescribes()
    {
        using var dir = new TempFolder();
        using var model = ModelLoader.Load(PlantedCheckpoint(dir));
        var detection = new SuperWeightDetector().Detect(model, Prompt);
        var ablation = new SuperWeightAblation(model, detection);
        var options = new AblationOptions { Context = 32, Stride = 16, Scales = new[] { 0.0, 1.0, 2.0 }, ControlCount = 20 };
        int[] stream = Stream(96);

        var conditions = ablation.Conditions(stream, options);
        var zeroed = conditions.Single(c => c.Name == "zeroed").Quality;
        var restored = conditions.Single(c => c.Name == "zeroed+activation-restored").Quality;
        Assert.IsTrue(zeroed.KlDivergence.Value > 0.01, $"zeroing changes the model: KL {zeroed.KlDivergence.Value}");
        Assert.IsTrue(restored.KlDivergence.Value < zeroed.KlDivergence.Value,
            $"restoring the super activation recovers part: {restored.KlDivergence.Value} vs {zeroed.KlDivergence.Value}");

        var scaling = ablation.Scaling(stream, options);
        Assert.AreEqual(0.0, scaling.Single(s => s.Scale == 1.0).Quality.KlDivergence.Value, 1e-12, "scale 1 is the original");
        Assert.AreEqual(zeroed.KlDivergence.Value, scaling.Single(s => s.Scale == 0.0).Quality.KlDivergence.Value, 1e-9, "scale 0 is zeroing");
        Assert.IsTrue(scaling.Single(s => s.Scale == 2.0).Quality.KlDivergence.Value > 0);

        var control = ablation.Control(stream, options);
        Assert.AreEqual(20, control.Count);
        Assert.IsTrue(control.Quality.KlDivergence.Value < zeroed.KlDivergence.Value,
            $"one super weight matters more than the 20 largest other weights: {zeroed.KlDivergence.Value} vs {control.Quality.KlDivergence.Value}");

        // The model is left exactly as it was.
        Assert.AreEqual(5f, SuperWeightDetector.ReadWeight(model, 1, 17, 45));
    }

    /// <summary>The control zeroes the N largest other weights over every linear layer by default (the paper), over
    /// all down_proj matrices, or over the super weight's own matrix; the smallest magnitude zeroed is the N-th
    /// largest |w| of that scope without the super weight, found here by sorting the checkpoint's own floats.</summary>
    [TestMethod]
    public void ControlTakesTheLargestWeightsOfItsScope()
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec { Layers = 3 };
        Dictionary<string, float[]> w = null!;
        string folder = Planted(dir, spec, edit: weights =>
        {
            weights["model.layers.0.self_attn.q_proj.weight"][3] = 0.9f; // large ordinary weights outside down_proj
            weights["model.layers.2.mlp.up_proj.weight"][7] = -0.8f;
            w = weights;
        });
        using var model = ModelLoader.Load(folder);
        var ablation = new SuperWeightAblation(model, new SuperWeightDetector().Detect(model, Prompt));
        int[] stream = Stream(48);
        const int n = 20; // 1% of the 32 x 64 down_proj is 20: the cap for the narrowest scope
        foreach (var (scope, names) in new[]
        {
            (ControlScope.AllLinear, new[] { "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj" }),
            (ControlScope.AllDownProj, new[] { "down_proj" }),
            (ControlScope.SuperWeightMatrices, new[] { "layers.1.mlp.down_proj" }),
        })
        {
            var magnitudes = w.Where(kv => kv.Key.Contains("layers.") && kv.Key.EndsWith(".weight") && names.Any(kv.Key.Contains) && !kv.Key.Contains("norm"))
                .SelectMany(kv => kv.Value.Select((v, i) => kv.Key == "model.layers.1.mlp.down_proj.weight" && i == 17 * spec.Intermediate + 45 ? 0f
                    : Math.Abs(v)))
                .OrderByDescending(v => v).ToArray();
            var control = ablation.Control(stream, new AblationOptions { Context = 24, Stride = 12, ControlCount = n, ControlScope = scope });
            Assert.AreEqual(n, control.Count, scope.ToString());
            Assert.AreEqual(magnitudes[n - 1], control.SmallestMagnitudeZeroed, 1e-7, scope.ToString());
        }
        Assert.AreEqual(5f, SuperWeightDetector.ReadWeight(model, 1, 17, 45), "the model is left as it was");
        Assert.AreEqual(0.9f, model.Weights.Layer(0).Wq[0, 3].item<float>());
    }

    /// <summary>The super weight is not necessarily the largest weight: an ordinary down_proj weight planted larger
    /// than it, in a column whose input never spikes, is not detected; the super weight is.</summary>
    [TestMethod]
    public void ALargerOrdinaryWeightIsNotASuperWeight()
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec { Layers = 3 };
        string folder = Planted(dir, spec, edit: w =>
        {
            w["model.layers.1.mlp.down_proj.weight"][5 * spec.Intermediate + 9] = 8f;   // |8| > the super weight's 5
            w["model.layers.2.mlp.down_proj.weight"][20 * spec.Intermediate + 30] = -12f;
        });
        using var model = ModelLoader.Load(folder);
        var found = new SuperWeightDetector().Detect(model, Prompt).SuperWeights;
        Assert.AreEqual(1, found.Count, string.Join(", ", found));
        Assert.AreEqual((1, 17, 45), (found[0].Layer, found[0].Row, found[0].Column));
    }

    [TestMethod]
    public void AnalyzeWritesJsonAndAnHtmlPageShowingItsNumbers()
    {
        using var dir = new TempFolder();
        string model = PlantedCheckpoint(dir);
        string ids = dir.File("ids.txt");
        TokenIdFile.Write(ids, Stream(120));
        string outDir = dir.File("out");
        var r = CliRunner.Run("analyze", "--model", model, "--prompt-tokens", string.Join(' ', Prompt), "--tokens", ids,
            "--context", "40", "--stride", "20", "--control-count", "30", "--stopword-prompts", "2", "--out", outDir, "--device", "cpu");
        Assert.AreEqual(0, r.ExitCode, r.StdErr + r.StdOut);

        var json = File.ReadAllText(Path.Combine(outDir, "analysis.json"));
        var report = JsonSerializer.Deserialize<AnalysisReport>(json, AnalysisReport.Json)!;
        Assert.AreEqual(AnalysisReport.SchemaName, report.Schema);
        Assert.AreEqual(1, report.SchemaVersion);
        Assert.AreEqual((1, 17, 45), (report.Detection.SuperWeights[0].Layer, report.Detection.SuperWeights[0].Row, report.Detection.SuperWeights[0].Column));
        Assert.AreEqual(2, report.Conditions.Count);
        Assert.AreEqual(7, report.Scaling.Count);
        Assert.IsNotNull(report.Control);
        Assert.IsNotNull(report.Stopwords);
        StringAssert.Contains(report.Stopwords!.Source, "no tokenizer");
        // Share of the loss recovered by restoring the super activation, from the report's own perplexities.
        double zeroed = report.Conditions.Single(c => c.Name == "zeroed").Perplexity,
            restored = report.Conditions.Single(c => c.Name == "zeroed+activation-restored").Perplexity;
        Assert.AreEqual((zeroed - restored) / (zeroed - report.Evaluation!.Perplexity), report.RestoredShare!.Value, 1e-12);
        // The super activation (layer 1, channel 17) on every traced prompt, on the token it fires at (BOS-led slices:
        // the planted one fires on every token through the boosted embedding channel, so each slice's strongest token),
        // and in the residual stream: small before block 1, large after it and after the last block.
        var trace = report.Traces.Single();
        Assert.AreEqual((1, 17, 2), (trace.Layer, trace.Channel, trace.Prompts.Count)); // 120 tokens: slices at 0 and 64
        Assert.IsTrue(trace.Prompts.All(p => Math.Abs(p.Value) > 20), string.Join(", ", trace.Prompts));
        Assert.IsTrue(trace.ResidualMagnitude[1] > 10 * trace.ResidualMagnitude[0] && trace.ResidualMagnitude[2] > 10 * trace.ResidualMagnitude[0],
            string.Join(" ", trace.ResidualMagnitude));

        string html = File.ReadAllText(Path.Combine(outDir, "analysis.html"));
        StringAssert.Contains(html, "model.layers.1.mlp.down_proj.weight[17, 45]");
        var numbers = new List<double> { report.Evaluation!.Perplexity, report.Control!.Perplexity };
        numbers.AddRange(report.Conditions.SelectMany(c => new[] { c.Perplexity, c.KlDivergence, c.Top1Agreement }));
        numbers.AddRange(report.Scaling.SelectMany(s => new[] { s.Scale, s.Perplexity, s.KlDivergence }));
        numbers.AddRange(report.Detection.Spikes.SelectMany(s => new[] { s.InputMagnitude, s.OutputMagnitude }));
        numbers.AddRange(report.Stopwords.Tokens.SelectMany(t => new[] { t.Original, t.Zeroed }));
        foreach (double v in numbers) StringAssert.Contains(html, AnalysisHtml.Fmt(v), $"value {v} from analysis.json is not on the page");
        Assert.AreEqual(report.Detection.Spikes.Count * 2 + report.Stopwords.Tokens.Count * 2, CountOf(html, "<rect "),
            "one bar per spike and per stopword value");
        Assert.AreEqual(report.Scaling.Count, CountOf(html, "<circle "), "one point per scale");
        Assert.IsFalse(html.Contains("<script"), "self-contained, no scripts");
    }

    /// <summary>Text in, text out on a planted model with the real LLaMA-2 tokenizer: `analyze --next-token` prints
    /// the top next tokens with and without the super weight, their probabilities equal to a softmax computed here
    /// by a plain loop over the model's logits; `generate --prompt` streams the prompt and its greedy continuation,
    /// the same text the written ids decode to; both say SQ2006 on a model without a tokenizer.</summary>
    [TestMethod]
    [TestCategory(TestCategories.Slow)]
    public void NextTokenAndTextGeneration()
    {
        using var dir = new TempFolder();
        string folder = Planted(dir, new TinyModelSpec { Layers = 3, Vocab = 32000 });
        File.Copy(SharedModels.Llama2Tokenizer, Path.Combine(folder, "tokenizer.model"));
        TokenIdFile.Write(dir.File("ids.txt"), Stream(80));
        const string prompt = "Summer is hot. Winter is";
        File.WriteAllText(dir.File("piqa.jsonl"), "{\"goal\": \"Open a jar\", \"sol1\": \"twist the lid\", \"sol2\": \"eat the lid\", \"label\": 0}\n" +
            "{\"goal\": \"Dry a towel\", \"sol1\": \"hang it in the sun\", \"sol2\": \"put it in the freezer\", \"label\": 0}\n");
        File.WriteAllText(dir.File("lambada.jsonl"), "{\"text\": \"She opened the box and found a small red ball\"}\n{\"text\": \"The dog ran to the " +
            "park with his friend\"}\n{\"text\": \"It was cold so he wore a warm coat\"}\n");
        var r = CliRunner.Run("analyze", "--model", folder, "--prompt-tokens", string.Join(' ', Prompt), "--tokens", dir.File("ids.txt"), "--context", "40",
            "--control-count", "10", "--stopword-prompts", "2", "--next-token", prompt, "--task", "piqa=" + dir.File("piqa.jsonl"),
            "--task", "lambada=" + dir.File("lambada.jsonl"), "--out", dir.File("out"), "--device", "cpu");
        Assert.AreEqual(0, r.ExitCode, r.Output);
        StringAssert.Contains(r.StdOut, "next token after \"Summer is hot. Winter is\"");
        var report = JsonSerializer.Deserialize<AnalysisReport>(File.ReadAllText(dir.File("out/analysis.json")), AnalysisReport.Json)!;
        var nt = report.NextToken!;
        using (var model = ModelLoader.Load(folder))
        {
            int[] ids = SuperQuant.Pipeline.Tokens.Tokenize(prompt, folder, 32000);
            using var logits = model.Forward(ids);
            float[] last = logits[-1].data<float>().ToArray();
            double max = last.Max(), sum = last.Sum(v => Math.Exp(v - max));
            foreach (var t in nt.Original) Assert.AreEqual(Math.Exp(last[t.Id] - max) / sum, t.Probability, 1e-6);
            Assert.AreEqual(Array.IndexOf(last, last.Max()), nt.Original[0].Id, "the top token is the argmax");
            // The scaling sweep by accuracy: at 1x it is the unmodified model's accuracy.
            var docs = SuperQuant.Pipeline.TaskRequests.Tokenize(TaskFile.Read(dir.File("piqa.jsonl"), "piqa"),
                SuperQuant.Pipeline.Tokens.Encoder(folder, 32000), "piqa");
            double original = TaskScorer.Score("piqa", false, docs, t => model.Forward(t), 40).Accuracy.Value;
            Assert.AreEqual(original, report.Scaling.Single(x => x.Scale == 1.0).Accuracy!["piqa"], 1e-12);
            Assert.IsTrue(report.Scaling.All(x => x.Accuracy!.ContainsKey("piqa")));
        }
        Assert.AreEqual(5, nt.Zeroed!.Count);
        StringAssert.Contains(report.Stopwords!.Source, "prompts: 2 LAMBADA contexts", "the paper's stopword prompts are LAMBADA passages");
        Assert.AreNotEqual(nt.Original[0].Probability, nt.OriginalTopAfterZeroing, "zeroing the super weight changes the prediction");

        var g = CliRunner.Run("generate", "--model", folder, "--prompt", prompt, "-n", "6", "--temperature", "0", "--out", dir.File("gen.txt"),
            "--device", "cpu");
        Assert.AreEqual(0, g.ExitCode, g.Output);
        int[] written = TokenIdFile.Read(dir.File("gen.txt"), 32000);
        var tok = TokenizerLoader.Load(folder);
        int promptLength = SuperQuant.Pipeline.Tokens.Tokenize(prompt, folder, 32000).Length;
        Assert.AreEqual(prompt + tok.Decode(written.Skip(promptLength)), g.StdOut.TrimEnd('\n', '\r'));

        using var bare = new TempFolder();
        var none = CliRunner.Run("generate", "--model", PlantedCheckpoint(bare), "--prompt", prompt, "-n", "2");
        Assert.AreEqual(3, none.ExitCode, none.Output);
        StringAssert.Contains(none.StdErr, "SQ2006");
    }

    /// <summary>The stopword effect's direction on a planted model built to have it: the output head reads the super
    /// activation's channel with a negative weight for three "stopword" ids, so the super activation suppresses them
    /// (the paper: removing the super weight raises stopword probabilities). Measured at the last token of each
    /// prompt, zeroing the super weight must raise each of them more than twofold.</summary>
    [TestMethod]
    public void ZeroingTheSuperWeightRaisesTheStopwordsItSuppresses()
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec { Layers = 3 };
        int[] stop = { 4, 9, 30 };
        string folder = Planted(dir, spec, edit: w => { foreach (int id in stop) w["lm_head.weight"][id * spec.Hidden + 17] = -0.6f; });
        using var model = ModelLoader.Load(folder);
        var ablation = new SuperWeightAblation(model, new SuperWeightDetector().Detect(model, Prompt));
        var prompts = Enumerable.Range(0, 6).Select(i => Stream(12 + i, seed: 20 + i)).ToList();
        var rows = ablation.Stopwords(prompts, stop.Select(i => (i, $"#{i}")).ToList());
        foreach (var row in rows.Take(3)) Assert.IsTrue(row.Zeroed > 2 * row.Original, $"{row.Label}: {row.Original} -> {row.Zeroed}");
    }

    /// <summary>stories260K has no tokenizer: every text command says so with SQ2006 (exit 3) instead of guessing.</summary>
    [TestMethod]
    public void TextCommandsOnAModelWithoutATokenizerAreCodedErrors()
    {
        using var dir = new TempFolder();
        TokenIdFile.Write(dir.File("ids.txt"), Stream(80));
        File.WriteAllText(dir.File("piqa.jsonl"), "{\"goal\": \"a\", \"sol1\": \"b\", \"sol2\": \"c\", \"label\": 0}\n");
        File.WriteAllText(dir.File("t.txt"), "Once upon a time");
        using (var stories = Llama2cCheckpoint.Load(SharedModels.Stories260K))
            SuperQuant.Models.Gguf.GgufExporter.Write(dir.File("s.gguf"), stories,
                new SuperQuant.Models.Gguf.GgufExport { FileType = SuperQuant.Manifest.GgufFileType.F16, Name = "s" });
        foreach (var args in new[]
        {
            // A no_vocab GGUF: llama.cpp would abort the process if asked to tokenize.
            new[] { "eval", "-m", dir.File("s.gguf"), "--task", "piqa=" + dir.File("piqa.jsonl") },
            new[] { "eval", "-m", dir.File("s.gguf"), "--text", dir.File("t.txt") },
            new[] { "eval", "-m", SharedModels.Stories260K, "--task", "piqa=" + dir.File("piqa.jsonl") },
            new[] { "generate", "-m", SharedModels.Stories260K, "--prompt", "Once upon a time" },
            new[] { "analyze", "-m", SharedModels.Stories260K, "--prompt-tokens", "1 2 3", "--tokens", dir.File("ids.txt"), "--next-token",
                "Once upon a", "--out", dir.File("o") },
            new[] { "analyze", "-m", SharedModels.Stories260K, "--prompt-tokens", "1 2 3", "--tokens", dir.File("ids.txt"), "--task", "piqa="
                + dir.File("piqa.jsonl"), "--out", dir.File("o") },
        })
        {
            var r = CliRunner.Run(args);
            Assert.AreEqual(3, r.ExitCode, string.Join(' ', args) + "\n" + r.Output);
            StringAssert.Contains(r.StdErr, "SQ2006", string.Join(' ', args));
        }
        Assert.IsFalse(Directory.Exists(dir.File("o")), "nothing was written");
    }

    [TestMethod]
    public void AnalyzeOnAModelWithoutSuperWeightsSaysSoAndSkipsAblations()
    {
        using var dir = new TempFolder();
        string ids = dir.File("ids.txt");
        TokenIdFile.Write(ids, Stream(80));
        string outDir = dir.File("out");
        var r = CliRunner.Run("analyze", "--model", SharedModels.Stories260K, "--prompt-tokens", "1 306 434 306 461 390", "--tokens", ids,
            "--context", "80", "--out", outDir, "--device", "cpu");
        Assert.AreEqual(0, r.ExitCode, r.StdErr + r.StdOut);
        StringAssert.Contains(r.StdOut, "no super weight above threshold 50");
        var report = JsonSerializer.Deserialize<AnalysisReport>(File.ReadAllText(Path.Combine(outDir, "analysis.json")), AnalysisReport.Json)!;
        Assert.AreEqual(0, report.Detection.SuperWeights.Count);
        Assert.IsNotNull(report.AblationsSkipped);
        Assert.AreEqual(0, report.Conditions.Count);
        StringAssert.Contains(File.ReadAllText(Path.Combine(outDir, "analysis.html")), "no super weight above threshold");
    }

    static int CountOf(string s, string what)
    {
        int n = 0;
        for (int i = s.IndexOf(what, StringComparison.Ordinal); i >= 0; i = s.IndexOf(what, i + 1, StringComparison.Ordinal)) n++;
        return n;
    }
}
