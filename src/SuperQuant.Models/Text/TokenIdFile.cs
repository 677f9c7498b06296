using SuperQuant.Core;

namespace SuperQuant.Models.Text;

/// <summary>A token-id stream for models without a tokenizer: integers separated by whitespace or commas;
/// '#' starts a comment that runs to the end of the line.</summary>
public static class TokenIdFile
{
    public static int[] Read(string path, int vocabSize)
    {
        if (!File.Exists(path)) throw new SuperQuantException(ErrorCodes.FileNotFound, $"token-id file not found: {path}", path);
        var ids = new List<int>();
        int lineNo = 0;
        foreach (string raw in File.ReadLines(path))
        {
            lineNo++;
            string line = raw.Split('#')[0];
            foreach (string item in line.Split(new[] { ' ', '\t', ',', '\r' }, StringSplitOptions.RemoveEmptyEntries))
            {
                if (!int.TryParse(item, out int id))
                    throw new SuperQuantException(ErrorCodes.TokenFileInvalid, $"{path}({lineNo}): '{item}' is not a token id", path);
                if (id < 0 || id >= vocabSize)
                    throw new SuperQuantException(ErrorCodes.TokenFileInvalid, $"{path}({lineNo}): token id {id} is outside the model's vocabulary [0, {vocabSize})", path);
                ids.Add(id);
            }
        }
        return ids.ToArray();
    }

    public static void Write(string path, IEnumerable<int> ids, string? comment = null)
    {
        using var w = new StreamWriter(path);
        if (comment != null) w.WriteLine($"# {comment}");
        int n = 0;
        foreach (int id in ids)
        {
            w.Write(id);
            w.Write(++n % 32 == 0 ? '\n' : ' ');
        }
        w.WriteLine();
    }
}
