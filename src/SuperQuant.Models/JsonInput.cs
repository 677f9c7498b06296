using System.Text;
using System.Text.Json;
using SuperQuant.Core;

namespace SuperQuant.Models;

/// <summary>
/// Every JSON file we read from users (config.json, model.safetensors.index.json, tokenizer.json, tokenizer_config.json)
/// goes through here: size-capped, strictly UTF-8 (JsonDocument transcodes strings lazily, so invalid UTF-8 would only
/// surface later as an InvalidOperationException from GetString), and parsed into a document whose root must be an
/// object. <see cref="Guard"/> turns the element accessors' own exceptions (wrong value kinds, missing keys) into the
/// reader's coded error.
/// </summary>
public static class JsonInput
{
    public const long MaxBytes = 64L << 20;
    static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    public static JsonDocument Parse(string path, string code)
    {
        DataFile.Require(path, "JSON file", code);
        if (new FileInfo(path).Length > MaxBytes) throw new SuperQuantException(code, $"{path} is larger than {MaxBytes >> 20} MiB", path);
        ReadOnlyMemory<byte> bytes = File.ReadAllBytes(path);
        if (DataFile.NotUtf8(bytes.Span[..Math.Min(bytes.Length, 4096)]) is string encoding)
            throw new SuperQuantException(code, $"{path} is {encoding} text; JSON files must be UTF-8", path);
        // A UTF-8 byte-order mark is allowed (editors on Windows write one); System.Text.Json refuses it.
        if (bytes.Span.StartsWith(new byte[] { 0xEF, 0xBB, 0xBF })) bytes = bytes[3..];
        try { StrictUtf8.GetCharCount(bytes.Span); }
        catch (DecoderFallbackException) { throw new SuperQuantException(code, $"{path} is not valid UTF-8", path); }
        JsonDocument doc;
        try { doc = JsonDocument.Parse(bytes); }
        catch (JsonException e) { throw new SuperQuantException(code, $"{path} is not valid JSON: {e.Message}", path, e); }
        var kind = doc.RootElement.ValueKind;
        if (kind != JsonValueKind.Object)
        {
            doc.Dispose();
            throw new SuperQuantException(code, $"{path}: the top level is a JSON {kind.ToString().ToLowerInvariant()}, expected an object", path);
        }
        return doc;
    }

    /// <summary>Runs a reader over a parsed document; a value of the wrong kind or a missing key is <paramref name="code"/>.</summary>
    public static T Guard<T>(string path, string code, Func<T> read)
    {
        try { return read(); }
        catch (Exception e) when (e is InvalidOperationException or KeyNotFoundException or FormatException or IndexOutOfRangeException or OverflowException)
        {
            throw new SuperQuantException(code, $"{path}: unexpected content ({e.Message})", path, e);
        }
    }
}
