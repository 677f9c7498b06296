using System.Text;
using SuperQuant.Core;

namespace SuperQuant.Models.Text;

/// <summary>A token-id stream for models without a tokenizer: integers separated by whitespace or commas;
/// '#' starts a comment that runs to the end of the line.</summary>
public static class TokenIdFile
{
    /// <summary>Largest file read (a 512 MiB file holds ~100M ids, far more than any evaluation needs): a device
    /// such as /dev/zero or a runaway file fails here instead of filling memory.</summary>
    public const long MaxBytes = 512L << 20;

    /// <summary>Longest item accepted: an id has at most 10 digits; anything longer is not an id, and the error quotes
    /// only its start.</summary>
    const int MaxItemChars = 12;

    /// <param name="minimum">Fewer ids is an error naming the file (evaluation needs 2).</param>
    public static int[] Read(string path, int vocabSize, int minimum = 1)
    {
        SuperQuantException Bad(int line, string what) => new(ErrorCodes.TokenFileInvalid, $"{path}({line}): {what}", path);
        var ids = new List<int>();
        using var reader = DataFile.OpenUtf8(path, "token-id file", ErrorCodes.TokenFileInvalid);
        var item = new StringBuilder();
        int line = 1;
        bool comment = false;
        long chars = 0;
        void Flush()
        {
            if (item.Length == 0) return;
            string s = item.ToString();
            item.Clear();
            if (!int.TryParse(s, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int id))
                throw Bad(line, $"'{s}' is not a token id (expected non-negative integers)");
            if (id >= vocabSize) throw Bad(line, $"token id {id} is outside the model's vocabulary [0, {vocabSize})");
            ids.Add(id);
        }
        var buffer = new char[1 << 16];
        int n;
        while ((n = ReadChars(reader, buffer, path)) > 0)
        {
            chars += n;
            if (chars > MaxBytes) throw Bad(line, $"the file is larger than {MaxBytes >> 20} MiB; a token-id file that large is not an evaluation " +
                $"set (is it a device or the wrong file?)");
            for (int i = 0; i < n; i++)
            {
                char c = buffer[i];
                if (c == '\n') { Flush(); comment = false; line++; continue; }
                if (comment) continue;
                if (c == '#') { Flush(); comment = true; continue; }
                if (c is ' ' or '\t' or ',' or '\r') { Flush(); continue; }
                if (item.Length >= MaxItemChars)
                    throw Bad(line, $"'{item}{c}...' is not a token id (items are integers separated by spaces, commas or newlines)");
                item.Append(c);
            }
        }
        Flush();
        if (ids.Count < minimum)
            throw new SuperQuantException(ErrorCodes.TokenFileInvalid,
                $"{path}: holds {ids.Count} token id{(ids.Count == 1 ? "" : "s")}; at least {minimum} needed", path);
        return ids.ToArray();
    }

    static int ReadChars(StreamReader reader, char[] buffer, string path)
    {
        try { return reader.Read(buffer, 0, buffer.Length); }
        catch (DecoderFallbackException)
        {
            throw new SuperQuantException(ErrorCodes.TokenFileInvalid,
            $"{path}: not valid UTF-8 text (expected token ids as text)", path);
        }
    }

    public static void Write(string path, IEnumerable<int> ids, string? comment = null)
    {
        var sb = new StringBuilder();
        if (comment != null) sb.Append("# ").Append(comment.Replace('\n', ' ')).Append('\n');
        int n = 0;
        foreach (int id in ids)
        {
            sb.Append(id);
            sb.Append(++n % 32 == 0 ? '\n' : ' ');
        }
        sb.Append('\n');
        byte[] bytes = Encoding.UTF8.GetBytes(sb.ToString());
        // Through a temp file and a rename, like every other writer: a full disk never leaves a truncated id file.
        AtomicFile.Write(path, bytes.Length, fs => fs.Write(bytes));
    }
}
