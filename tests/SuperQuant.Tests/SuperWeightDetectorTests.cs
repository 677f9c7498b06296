using SuperQuant.Core.Llama;
using SuperQuant.Core.SuperWeights;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Tests.Support;

namespace SuperQuant.Tests;

[TestClass]
public sealed class SuperWeightDetectorTests
{
    static readonly int[] Prompt = { 1, 7, 22, 5, 40, 13, 2, 9 };

    static LlamaModel PlantedModel(TempFolder dir, TinyModelSpec spec, params (int layer, int row, int col)[] plants)
    {
        var w = TinyCheckpointFactory.RandomWeights(spec);
        SuperWeightPlanter.BoostEmbeddingChannel(w, spec);
        foreach (var (layer, row, col) in plants) SuperWeightPlanter.Plant(w, spec, layer, row, col);
        TinyCheckpointFactory.Write(dir.Path, spec, w);
        return ModelLoader.Load(dir.Path);
    }

    [TestMethod]
    public void FindsAPlantedSuperWeightAtItsExactCoordinates()
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec { Layers = 3 };
        using var model = PlantedModel(dir, spec, (1, 17, 45));
        using var before = model.Weights.Layer(1).WDown.clone();

        var report = new SuperWeightDetector().Detect(model, Prompt);

        Assert.AreEqual(1, report.SuperWeights.Count, string.Join("; ", report.SuperWeights));
        var sw = report.SuperWeights[0];
        Assert.AreEqual((1, 17, 45), (sw.Layer, sw.Row, sw.Column));
        Assert.AreEqual(5f, sw.Value);
        var act = report.SuperActivations[0];
        Assert.AreEqual((1, 17), (act.Layer, act.Channel));
        Assert.IsTrue(Math.Abs(act.Value) > 50);
        Assert.AreEqual(45, act.InputChannel);
        Assert.AreEqual(2, report.Iterations, "one pass finds it, a second confirms nothing is left");
        Assert.IsTrue(model.Weights.Layer(1).WDown.equal(before).all().item<bool>(), "weights restored after detection");
    }

    [TestMethod]
    public void FindsTwoSuperWeightsInDifferentLayersInOrder()
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec { Layers = 4 };
        // The layer-2 plant reads channel 0 too; while the layer-0 super activation dominates the residual stream,
        // RMSNorm squashes channel 0 and the second one stays hidden: it appears only after the first is zeroed.
        using var model = PlantedModel(dir, spec, (0, 3, 10), (2, 29, 60));
        var report = new SuperWeightDetector().Detect(model, Prompt);
        var coords = report.SuperWeights.Select(s => (s.Layer, s.Row, s.Column)).ToList();
        CollectionAssert.AreEqual(new[] { (0, 3, 10), (2, 29, 60) }, coords, string.Join("; ", report.SuperWeights));
        Assert.IsTrue(report.SuperWeights[0].Iteration <= report.SuperWeights[1].Iteration);
    }

    [TestMethod]
    public void ModelWithoutAPlantReportsNoneAndItsLargestSpikes()
    {
        using var dir = new TempFolder();
        TinyCheckpointFactory.Write(dir.Path, new TinyModelSpec { Layers = 3 });
        using var model = ModelLoader.Load(dir.Path);
        var report = new SuperWeightDetector().Detect(model, Prompt);
        Assert.IsFalse(report.Found);
        Assert.AreEqual(1, report.Iterations);
        Assert.AreEqual(3, report.OriginalSpikes.Count);
        Assert.IsTrue(report.OriginalSpikes.All(l => l.Output.Magnitude > 0 && l.Output.Magnitude <= 50));
    }

    [TestMethod]
    public void RelativeRuleFindsASmallScalePlantThePaperRuleMisses()
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec { Layers = 3 };
        var w = TinyCheckpointFactory.RandomWeights(spec);
        SuperWeightPlanter.BoostEmbeddingChannel(w, spec);
        SuperWeightPlanter.Plant(w, spec, 1, 8, 33, gain: 1.2f, weight: 1.5f); // spike well above the others, below 50
        TinyCheckpointFactory.Write(dir.Path, spec, w);
        using var model = ModelLoader.Load(dir.Path);
        Assert.IsFalse(new SuperWeightDetector().Detect(model, Prompt).Found);
        var relative = new SuperWeightDetector { Rule = new SpikeRule { TimesMedian = 5 } }.Detect(model, Prompt);
        Assert.AreEqual((1, 8, 33), (relative.SuperWeights[0].Layer, relative.SuperWeights[0].Row, relative.SuperWeights[0].Column));
    }

    [TestMethod]
    public void Stories260KReportIsWellFormedAndReproducible()
    {
        using var model = Llama2cCheckpoint.Load(SharedModels.Stories260K);
        int[] prompt = { 1, 306, 434, 306, 461, 390, 397, 283, 411, 283 };
        foreach (var rule in new[] { SpikeRule.Paper, new SpikeRule { TimesMedian = 3 } })
        {
            var detector = new SuperWeightDetector { Rule = rule };
            var a = detector.Detect(model, prompt);
            var b = detector.Detect(model, prompt);
            Assert.AreEqual(5, a.OriginalSpikes.Count);
            CollectionAssert.AreEqual(a.SuperWeights.ToList(), b.SuperWeights.ToList());
            CollectionAssert.AreEqual(a.OriginalSpikes.ToList(), b.OriginalSpikes.ToList());
            foreach (var sw in a.SuperWeights)
            {
                Assert.IsTrue(sw.Layer is >= 0 and < 5 && sw.Row is >= 0 and < 64 && sw.Column is >= 0 and < 172, sw.ToString());
                Assert.AreEqual(SuperWeightDetector.ReadWeight(model, sw.Layer, sw.Row, sw.Column), sw.Value);
            }
            // Every reported weight's layer really spiked above the rule's threshold in the pass that found it.
            foreach (var sw in a.SuperWeights)
                Assert.IsTrue(a.Passes[sw.Iteration - 1][sw.Layer].Output.Magnitude > rule.ThresholdFor(a.Passes[sw.Iteration - 1]));
        }
    }

    [TestMethod]
    public void RecorderOverrideRestoresAnActivation()
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec { Layers = 2 };
        using var model = PlantedModel(dir, spec, (0, 5, 7));
        var original = SuperWeightDetector.RecordPass(model, Prompt)[0].Output;
        SuperWeightDetector.WriteWeight(model, 0, 5, 7, 0f);
        var zeroed = SuperWeightDetector.RecordPass(model, Prompt)[0].Output;
        Assert.IsTrue(zeroed.Magnitude < original.Magnitude / 10);
        var recorder = new DownProjSpikeRecorder(2);
        recorder.OutputOverrides[(0, original.Token, original.Channel)] = (float)original.Value;
        var restored = SuperWeightDetector.RecordPass(model, Prompt, recorder)[0].Output;
        Assert.AreEqual(original.Value, restored.Value, 1e-3);
    }

    [TestMethod]
    public void TheInputChannelIsTakenAtTheOutputSpikesToken()
    {
        // down_proj input [1, 4 tokens, 6 channels]: the largest |input| anywhere is channel 2 at token 0, but at token 3,
        // where the output spikes (channel 1), the largest input is channel 5. Y[3, 1] = sum_k X[3, k] W[1, k] is made by
        // W[1, 5], so that is the super weight's coordinate.
        var x = new float[24];
        x[0 * 6 + 2] = 900f;
        x[3 * 6 + 5] = -400f;
        x[3 * 6 + 2] = 1f;
        var y = new float[4 * 3];
        y[3 * 3 + 1] = 700f;
        using var input = TorchSharp.torch.tensor(x, new long[] { 1, 4, 6 });
        using var output = TorchSharp.torch.tensor(y, new long[] { 1, 4, 3 });
        var recorder = new DownProjSpikeRecorder(1);
        var site = new LinearSite(0, Projection.Down);
        recorder.OnLinearInput(site, input);
        recorder.OnLinearOutput(site, output);
        var spikes = recorder.Layers[0];
        Assert.AreEqual((2, 0), (spikes.Input.Channel, spikes.Input.Token), "the prompt-wide input max, for the report");
        Assert.AreEqual((1, 3), (spikes.Output.Channel, spikes.Output.Token));
        Assert.AreEqual((5, 3, -400.0), (spikes.PairedInput.Channel, spikes.PairedInput.Token, spikes.PairedInput.Value));
    }
}
