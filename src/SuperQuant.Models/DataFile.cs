using System.Text;
using SuperQuant.Core;
using SuperQuant.Manifest;

namespace SuperQuant.Models;

/// <summary>
/// The checks every input file gets before it is read: it exists, it is a regular file (a FIFO would block the run
/// forever, /dev/zero would never end), and it is registered as an input of this run (<see cref="InputFiles"/>), so
/// nothing this run writes can replace it. Text inputs must be UTF-8: a UTF-16 or UTF-32 file (by its byte-order mark,
/// or the NUL bytes its ASCII characters carry) is refused instead of being read as something else.
/// </summary>
public static class DataFile
{
    /// <param name="what">"token-id file", "task file", ...: the start of the messages.</param>
    /// <param name="code">The reader's own error code for a file of the wrong kind.</param>
    public static void Require(string path, string what, string code)
    {
        if (Directory.Exists(path)) throw new SuperQuantException(code, $"{what} {path} is a folder; expected a file", path);
        if (!File.Exists(path)) throw new SuperQuantException(ErrorCodes.FileNotFound, $"{what} not found: {path}", path);
        if (InputFiles.NotARegularFile(path) is string problem) throw new SuperQuantException(code, $"{what} {problem}", path);
        InputFiles.Register(path, "the " + what);
    }

    /// <summary>Opens a UTF-8 text input (an optional UTF-8 byte-order mark is skipped); invalid UTF-8 later in the file
    /// throws DecoderFallbackException from the reader.</summary>
    public static StreamReader OpenUtf8(string path, string what, string code, int bufferSize = 1 << 16)
    {
        Require(path, what, code);
        // Buffers no larger than the file: a 70-byte token file does not pay for 64 KiB (the fuzz tests bound it).
        int buffer = (int)Math.Clamp(new FileInfo(path).Length, 128, bufferSize);
        var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, buffer);
        try
        {
            Span<byte> head = stackalloc byte[512];
            int n = stream.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
            if (NotUtf8(head[..n]) is string encoding)
                throw new SuperQuantException(code, $"{what} {path} is {encoding} text; expected UTF-8 (convert it, e.g. iconv -f {encoding} -t UTF-8)", path);
            stream.Position = 0;
            return new StreamReader(stream, new UTF8Encoding(false, throwOnInvalidBytes: true), detectEncodingFromByteOrderMarks: true, buffer);
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    /// <summary>The encoding a text's first bytes show when it is not UTF-8 ("UTF-16LE", ...), else null.</summary>
    public static string? NotUtf8(ReadOnlySpan<byte> head)
    {
        if (head.StartsWith(new byte[] { 0xFF, 0xFE, 0, 0 })) return "UTF-32LE";
        if (head.StartsWith(new byte[] { 0, 0, 0xFE, 0xFF })) return "UTF-32BE";
        if (head.StartsWith(new byte[] { 0xFF, 0xFE })) return "UTF-16LE";
        if (head.StartsWith(new byte[] { 0xFE, 0xFF })) return "UTF-16BE";
        int nul = head.IndexOf((byte)0);
        if (nul < 0) return null;
        return nul % 2 == 1 ? "UTF-16LE" : "UTF-16BE"; // ASCII in UTF-16: the NUL follows (LE) or precedes (BE) each byte
    }
}
