using SuperQuant.Core;
using SuperQuant.Core.Evaluation;
using SuperQuant.Core.Llama;
using SuperQuant.Models.Text;

namespace SuperQuant.Pipeline.Stages;

/// <summary>The zero-shot tasks of a run, tokenized, and the unquantized model's scores (the accuracy gate's baselines).</summary>
sealed record TaskSet(IReadOnlyList<(string Name, IReadOnlyList<ScoredDocument> Docs)> Tasks, IReadOnlyList<TaskScore> Baselines, int Context)
{
    public static TaskSet None(int context) => new(Array.Empty<(string, IReadOnlyList<ScoredDocument>)>(), Array.Empty<TaskScore>(), context);
}

/// <summary>Tasks: tokenize each task file with the checkpoint's tokenizer and score the original model on it.</summary>
static class TaskStage
{
    public static TaskSet Run(QuantizationRequest r, PipelineOptions o, LlamaModel model, RunData data)
    {
        if (r.Tasks.Count == 0) return TaskSet.None(r.Context);
        var log = o.Log;
        using (log.Step("tasks (original)"))
        {
            Func<string, int[]> encode;
            try { encode = Tokens.Encoder(data.Tokenizer, model.Config.VocabSize); }
            catch (SuperQuantException e) when (e.Code == ErrorCodes.TokenizerUnsupported)
            {
                throw new SuperQuantException(e.Code, $"{r.Tasks[0].Origin.Where}: zero-shot tasks are text and need the checkpoint's tokenizer: " +
                    $"{e.Message}", r.Tasks[0].Origin.File, e);
            }
            var tasks = r.Tasks.Select(t => (t.Name, TaskRequests.Tokenize(TaskFile.Read(t.Path, t.Name), encode, t.Path))).ToList();
            int ctx = data.Context;
            var baselines = tasks.Select(t =>
            {
                var p = log.Progress($"{r.Id}: {t.Name} (original)");
                var (logits, batches) = MemoryPlan.Requests(model, t.Item2, ctx);
                using (batches) return TaskScorer.Score(t.Name, t.Name == "lambada", t.Item2, logits, ctx, (d, n) => p(d, n), o.Cancel);
            }).ToList();
            foreach (var b in baselines) log.Info($"{r.Id}: {b.Task} original accuracy {b.Accuracy.Value:P2} +/- {b.Accuracy.StandardError:P2} " +
                $"({b.Documents} documents)");
            return new TaskSet(tasks.Select(t => (t.Name, (IReadOnlyList<ScoredDocument>)t.Item2)).ToList(), baselines, ctx);
        }
    }
}
