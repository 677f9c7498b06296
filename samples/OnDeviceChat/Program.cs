using System.Text;
using LLama;
using LLama.Common;
using LLama.Native;

// Chats with the GGUF `dotnet build` quantized, gated and copied next to this app, as an app would: LLamaSharp
// (llama.cpp in process) loads it, each turn is formatted with the chat template that travelled inside the file,
// tokenized by the file's own vocabulary (BOS added where the family adds it), answered greedily with llama.cpp's KV
// cache until the end-of-turn token, and printed as text. The weights are random: expect words, not sense (and
// sampled at temperature 0.8 with a fixed seed, because greedy decoding of random weights repeats one token).
string models = Path.Combine(AppContext.BaseDirectory, "models");
string? gguf = Directory.Exists(models) ? Directory.GetFiles(models, "*.gguf").OrderBy(f => f).FirstOrDefault() : null;
if (gguf is null)
{
    Console.Error.WriteLine($"no GGUF in {models}: build the project first (dotnet build)");
    return 1;
}
string[] questions = args.Length > 0 ? args : new[] { "Hello! Who are you?", "Tell me a story about a cat." };
const int MaxAnswerTokens = 24;

NativeLogConfig.llama_log_set((level, message) => { if (level == LLamaLogLevel.Error) Console.Error.Write(message); });
var parameters = new ModelParams(gguf) { ContextSize = 512, GpuLayerCount = 0 };
using var weights = LLamaWeights.LoadFromFile(parameters);
using var context = weights.CreateContext(parameters);
Console.WriteLine($"llama.cpp: {Path.GetFileName(gguf)} ({weights.NativeHandle.FileType}, {new FileInfo(gguf).Length / 1024} KiB), " +
    $"chat template from the file: {(weights.Metadata.ContainsKey("tokenizer.chat_template") ? "yes" : "no")}");

var history = new LLamaTemplate(weights, strict: true) { AddAssistant = true };
int position = 0;      // tokens already in llama.cpp's KV cache
string formattedSoFar = "";
var endOfTurn = new HashSet<LLamaToken>();
if (weights.Vocab.EOT is LLamaToken eot) endOfTurn.Add(eot);
if (weights.Vocab.EOS is LLamaToken eos) endOfTurn.Add(eos);
var batch = new LLamaBatch();
var rng = new Random(7);

foreach (string question in questions)
{
    Console.WriteLine($"you:   {question}");
    history.Add("user", question);
    // The template formats the whole conversation; only what it added since the last turn is fed to the model.
    string formatted = Encoding.UTF8.GetString(history.Apply());
    string newText = formatted[formattedSoFar.Length..];
    LLamaToken[] prompt = context.Tokenize(newText, addBos: position == 0, special: true);
    var decoder = new StreamingTokenDecoder(context);
    var answer = new List<LLamaToken>();
    LLamaToken[] feed = prompt;
    for (int i = 0; i < MaxAnswerTokens; i++)
    {
        batch.Clear();
        for (int j = 0; j < feed.Length; j++) batch.Add(feed[j], position + j, (LLamaSeqId)0, j == feed.Length - 1);
        if (context.NativeHandle.Decode(batch) != DecodeResult.Ok) throw new InvalidOperationException("llama.cpp failed to decode");
        position += feed.Length;
        var token = (LLamaToken)Sample(context.NativeHandle.GetLogitsIth(batch.TokenCount - 1), rng);
        if (endOfTurn.Contains(token)) break;
        answer.Add(token);
        decoder.Add(token);
        feed = new[] { token };
    }
    string reply = decoder.Read();
    Console.WriteLine($"model: {reply}");
    history.Add("assistant", reply);
    // The reply's tokens are in the cache; the next turn's text starts after this turn as the template writes it.
    history.AddAssistant = false;
    formattedSoFar = Encoding.UTF8.GetString(history.Apply());
    history.AddAssistant = true;
    // Keep the cache in step with the template: re-feed the closing of this turn (end-of-turn marker and newlines).
    context.NativeHandle.MemoryClear(true);
    LLamaToken[] all = context.Tokenize(formattedSoFar, addBos: true, special: true);
    for (int start = 0; start < all.Length; start += 256)
    {
        batch.Clear();
        int n = Math.Min(256, all.Length - start);
        for (int j = 0; j < n; j++) batch.Add(all[start + j], start + j, (LLamaSeqId)0, false);
        if (context.NativeHandle.Decode(batch) != DecodeResult.Ok) throw new InvalidOperationException("llama.cpp failed to decode");
    }
    position = all.Length;
}
return 0;

static int Sample(ReadOnlySpan<float> logits, Random rng, double temperature = 0.8)
{
    float max = float.NegativeInfinity;
    foreach (float l in logits) max = Math.Max(max, l);
    var p = new double[logits.Length];
    double sum = 0;
    for (int t = 0; t < p.Length; t++) sum += p[t] = Math.Exp((logits[t] - max) / temperature);
    double u = rng.NextDouble() * sum;
    for (int t = 0; t < p.Length; t++) if ((u -= p[t]) <= 0) return t;
    return p.Length - 1;
}
