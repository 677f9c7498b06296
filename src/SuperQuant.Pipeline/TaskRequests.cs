using System.Text;
using SuperQuant.Core;
using SuperQuant.Core.Evaluation;
using SuperQuant.Models.Text;

namespace SuperQuant.Pipeline;

/// <summary>Task documents (text) to scored requests (token ids), as lm-evaluation-harness encodes them: trailing
/// spaces of a context move to the continuation, the pair is encoded whole, and the continuation is what follows the
/// context's own encoding.</summary>
public static class TaskRequests
{
    /// <param name="encode">Text to ids, with BOS first when the model uses one (the same for context and whole).</param>
    public static IReadOnlyList<ScoredDocument> Tokenize(IReadOnlyList<TaskDocument> docs, Func<string, int[]> encode, string file)
    {
        var result = new List<ScoredDocument>(docs.Count);
        for (int d = 0; d < docs.Count; d++)
        {
            var requests = new List<ScoredRequest>();
            foreach (var p in docs[d].Choices)
            {
                string context = p.Context, continuation = p.Continuation;
                int spaces = context.Length - context.TrimEnd(' ').Length;
                if (spaces > 0) { continuation = context[^spaces..] + continuation; context = context[..^spaces]; }
                int[] whole = encode(context + continuation);
                int[] ctx = encode(context);
                int split = Math.Min(ctx.Length, whole.Length - 1);
                if (split < 1 || whole.Length - split < 1)
                    throw new SuperQuantException(ErrorCodes.TaskFileInvalid,
                        $"{file}: document {d + 1}: the continuation '{ManifestExcerpt(p.Continuation)}' tokenizes to nothing", file);
                // acc_norm divides by the choice's length: the harness counts the characters of the choice text
                // (without the " " delimiter); we count its UTF-8 bytes, the same for ASCII.
                string choice = p.Continuation.StartsWith(' ') ? p.Continuation[1..] : p.Continuation;
                requests.Add(new ScoredRequest(whole[..split], whole[split..], Encoding.UTF8.GetByteCount(choice)));
            }
            result.Add(new ScoredDocument(requests, docs[d].Gold));
        }
        return result;
    }

    static string ManifestExcerpt(string s) => s.Length <= 40 ? s : s[..40] + "...";
}
