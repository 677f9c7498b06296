using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using SuperQuant.Core;

namespace SuperQuant.Models.Text;

/// <summary>How a task is scored.</summary>
public enum TaskKind
{
    /// <summary>Multiple choice: the choice with the highest summed log-likelihood of its continuation wins (acc), or
    /// of its log-likelihood divided by the continuation's UTF-8 byte length (acc_norm).</summary>
    MultipleChoice,
    /// <summary>Winogrande's partial scoring: each option makes a different context; the same continuation (the
    /// sentence after the blank) is scored under each. acc only.</summary>
    Partial,
    /// <summary>LAMBADA: the last word of the passage given the rest; acc = every token of it is the greedy choice,
    /// perplexity = exp(-mean log-likelihood of the last word).</summary>
    LastWord,
}

/// <summary>A zero-shot task as lm-evaluation-harness defines it; <see cref="Fields"/> are the JSON fields of one line
/// of the task's public release (one JSON object per line).</summary>
public sealed record TaskDefinition(string Name, TaskKind Kind, string Fields, string Prompt);

/// <summary>One scored request: the continuation's likelihood given the context.</summary>
public sealed record TaskPrompt(string Context, string Continuation);

/// <summary>One document: its choices (a single one for LAMBADA) and the index of the right one.</summary>
public sealed record TaskDocument(IReadOnlyList<TaskPrompt> Choices, int Gold);

/// <summary>
/// Reads the Super Weight paper's zero-shot tasks from user-supplied JSONL files (nothing is downloaded), building the
/// prompts exactly as lm-evaluation-harness's task configs do (prompt text, " " target delimiter, HellaSwag's
/// preprocessing, Winogrande's partial contexts, LAMBADA's last word). Errors name the file, line and field (SQ2010).
/// </summary>
public static class TaskFile
{
    /// <summary>Longest accepted line: a task document is a few KiB; a longer line is not one (and memory stays bounded).</summary>
    public const int MaxLineBytes = 1 << 20;
    public const int MaxDocuments = 1_000_000;
    /// <summary>Largest task file read (counted while reading, so a device or a pipe cannot make memory grow):
    /// the public releases are 1-50 MB.</summary>
    public const long MaxChars = 256L << 20;

    public static readonly IReadOnlyList<TaskDefinition> Tasks = new TaskDefinition[]
    {
        new("arc_easy", TaskKind.MultipleChoice, "question, choices {text: [...], label: [...]}, answerKey (allenai/ai2_arc, ARC-Easy)",
            "Question: {question}\\nAnswer: {choice}"),
        new("arc_challenge", TaskKind.MultipleChoice, "question, choices {text: [...], label: [...]}, answerKey (allenai/ai2_arc, ARC-Challenge)",
            "Question: {question}\\nAnswer: {choice}"),
        new("hellaswag", TaskKind.MultipleChoice, "activity_label, ctx_a, ctx_b, endings [4], label (Rowan/hellaswag)",
            "{activity_label}: {ctx_a} {Ctx_b} {ending}, preprocessed"),
        new("piqa", TaskKind.MultipleChoice, "goal, sol1, sol2, label (ybisk/piqa)", "Question: {goal}\\nAnswer: {sol}"),
        new("sciq", TaskKind.MultipleChoice, "support, question, distractor1, distractor2, distractor3, correct_answer (allenai/sciq)",
            "{support}\\nQuestion: {question}\\nAnswer: {choice}"),
        new("winogrande", TaskKind.Partial, "sentence (with one _), option1, option2, answer \"1\" or \"2\" (allenai/winogrande)",
            "{sentence before _ with the option} {rest of the sentence}"),
        new("lambada", TaskKind.LastWord, "text (EleutherAI/lambada_openai)", "{text without its last word}{ last word}"),
    };

    public static IReadOnlyList<string> TaskNames { get; } = Tasks.Select(t => t.Name).ToArray();

    public static TaskDefinition Definition(string name) => Tasks.FirstOrDefault(t => t.Name == name)
        ?? throw new SuperQuantException(ErrorCodes.InvalidArgument, $"unknown task '{name}' (known: {string.Join(", ", TaskNames)})");

    public static IReadOnlyList<TaskDocument> Read(string path, string task, int? limit = null)
    {
        var def = Definition(task);
        var docs = new List<TaskDocument>();
        using var reader = DataFile.OpenUtf8(path, "task file", ErrorCodes.TaskFileInvalid);
        int lineNo = 0;
        long total = 0;
        var buffer = new StringBuilder();
        while (ReadBoundedLine(reader, buffer, path, lineNo + 1) is string line)
        {
            total += line.Length + 1;
            if (total > MaxChars)
                throw new SuperQuantException(ErrorCodes.TaskFileInvalid,
                    $"{path}({lineNo + 1}): the file is larger than {MaxChars >> 20} MiB; a task file that large is not a task release (is it the " +
                    $"wrong file?)", path);
            lineNo++;
            if (line.Trim().Length == 0) continue;
            SuperQuantException Bad(string what) => new(ErrorCodes.TaskFileInvalid, $"{path}({lineNo}): {task}: {what} (expected fields: {def.Fields})", path);
            JsonDocument json;
            try { json = JsonDocument.Parse(line, new JsonDocumentOptions { MaxDepth = 16 }); }
            catch (JsonException e) { throw Bad($"not a JSON object: {e.Message}"); }
            using (json)
            {
                if (json.RootElement.ValueKind != JsonValueKind.Object) throw Bad("not a JSON object");
                try { docs.Add(Build(task, json.RootElement)); }
                catch (FormatException e) { throw Bad(e.Message); }
                // System.Text.Json decodes escapes lazily: a lone surrogate ("\ud800") surfaces when a string is read.
                catch (InvalidOperationException e) { throw Bad($"a string is not valid Unicode (a lone surrogate escape): {e.Message}"); }
            }
            if (docs.Count > MaxDocuments) throw Bad($"more than {MaxDocuments} documents");
            if (limit is int n && docs.Count >= n) break;
        }
        if (docs.Count == 0) throw new SuperQuantException(ErrorCodes.TaskFileInvalid, $"{path}: no {task} documents", path);
        return docs;
    }

    static string? ReadBoundedLine(StreamReader r, StringBuilder sb, string path, int lineNo)
    {
        sb.Clear();
        int c;
        try
        {
            while ((c = r.Read()) >= 0)
            {
                if (c == '\n') return sb.ToString();
                if (sb.Length >= MaxLineBytes)
                    throw new SuperQuantException(ErrorCodes.TaskFileInvalid,
                        $"{path}({lineNo}): line longer than {MaxLineBytes >> 20} MiB: not a task document", path);
                sb.Append((char)c);
            }
        }
        catch (DecoderFallbackException)
        {
            throw new SuperQuantException(ErrorCodes.TaskFileInvalid, $"{path}({lineNo}): not UTF-8", path);
        }
        return sb.Length > 0 ? sb.ToString() : null;
    }

    static string Str(JsonElement e, string field)
    {
        if (!e.TryGetProperty(field, out var v)) throw new FormatException($"field '{field}' is missing");
        return v.ValueKind switch
        {
            JsonValueKind.String => v.GetString()!,
            JsonValueKind.Number => v.GetRawText(),
            _ => throw new FormatException($"field '{field}' is not a string"),
        };
    }

    static string[] StrArray(JsonElement e, string field)
    {
        if (!e.TryGetProperty(field, out var v) || v.ValueKind != JsonValueKind.Array) throw new FormatException($"field '{field}' is not an array");
        return v.EnumerateArray().Select(x => x.ValueKind == JsonValueKind.String ? x.GetString()!
            : throw new FormatException($"field '{field}' holds a non-string")).ToArray();
    }

    static int Index(string value, int count, string field)
    {
        if (!int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out int i) || i < 0 || i >= count)
            throw new FormatException($"field '{field}' = '{value}' is not an index into {count} choices");
        return i;
    }

    static TaskDocument Choices(string context, IReadOnlyList<string> choices, int gold) =>
        new(choices.Select(c => new TaskPrompt(context, " " + c)).ToList(), gold);

    static TaskDocument Build(string task, JsonElement e)
    {
        switch (task)
        {
            case "arc_easy":
            case "arc_challenge":
                {
                    if (!e.TryGetProperty("choices", out var ch)
                        || ch.ValueKind != JsonValueKind.Object) throw new FormatException("field 'choices' is not an object");
                    string[] text = StrArray(ch, "text"), labels = StrArray(ch, "label");
                    if (text.Length != labels.Length || text.Length < 2) throw new FormatException("choices.text and choices.label must have the same " +
                        "length, at least 2");
                    int gold = Array.IndexOf(labels, Str(e, "answerKey"));
                    if (gold < 0) throw new FormatException($"answerKey '{Str(e, "answerKey")}' is not one of the labels");
                    return Choices($"Question: {Str(e, "question")}\nAnswer:", text, gold);
                }
            case "hellaswag":
                {
                    string ctxB = Str(e, "ctx_b");
                    string ctx = Str(e, "ctx_a") + " " + Capitalize(ctxB);
                    string[] endings = StrArray(e, "endings");
                    if (endings.Length < 2) throw new FormatException("field 'endings' needs at least 2 entries");
                    return Choices(HellaswagPreprocess(Str(e, "activity_label") + ": " + ctx), endings.Select(HellaswagPreprocess).ToList(),
                        Index(Str(e, "label"), endings.Length, "label"));
                }
            case "piqa":
                return Choices($"Question: {Str(e, "goal")}\nAnswer:", new[] { Str(e, "sol1"), Str(e, "sol2") }, Index(Str(e, "label"), 2, "label"));
            case "sciq":
                return Choices($"{Str(e, "support").TrimStart()}\nQuestion: {Str(e, "question")}\nAnswer:",
                    new[] { Str(e, "distractor1"), Str(e, "distractor2"), Str(e, "distractor3"), Str(e, "correct_answer") }, 3);
            case "winogrande":
                {
                    string sentence = Str(e, "sentence");
                    int blank = sentence.IndexOf('_');
                    if (blank < 0) throw new FormatException("field 'sentence' has no _ blank");
                    string target = " " + sentence[(blank + 1)..].Trim();
                    string answer = Str(e, "answer");
                    int gold = answer == "1" ? 0 : answer == "2" ? 1 : throw new FormatException($"field 'answer' = '{answer}' (expected \"1\" or \"2\")");
                    return new TaskDocument(new[] { Str(e, "option1"),
                    Str(e, "option2") }.Select(o => new TaskPrompt(sentence[..blank] + o, target)).ToList(), gold);
                }
            case "lambada":
                {
                    string text = Str(e, "text");
                    int space = text.LastIndexOf(' ');
                    if (space <= 0 || space == text.Length - 1) throw new FormatException("field 'text' needs a context and a last word separated by a space");
                    return new TaskDocument(new[] { new TaskPrompt(text[..space], text[space..]) }, 0);
                }
            default: throw new FormatException($"unknown task {task}");
        }
    }

    /// <summary>Python's str.capitalize(): first character upper case, the rest lower case.</summary>
    static string Capitalize(string s) => s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant();

    /// <summary>lm-evaluation-harness hellaswag/utils.py preprocess: strip, " [title]" -> ". ", drop [bracketed] tags,
    /// collapse double spaces.</summary>
    static string HellaswagPreprocess(string text)
    {
        text = text.Trim().Replace(" [title]", ". ");
        text = Regex.Replace(text, "\\[.*?\\]", "");
        return text.Replace("  ", " ");
    }
}
