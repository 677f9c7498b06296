namespace SuperQuant.Core;

/// <summary>Documented error codes. The CLI prints them as "error SQ2001: ..." and maps them to exit codes; the MSBuild
/// task surfaces them as build errors. Ranges: SQ0xxx environment, SQ1xxx quality gate, SQ2xxx checkpoints and data
/// files, SQ3xxx manifest, SQ4xxx quantization and artifacts.</summary>
public static class ErrorCodes
{
    /// <summary>TorchSharp's native libraries (or the chosen libtorch) could not be loaded.</summary>
    public const string NativeLoad = "SQ0001";
    /// <summary>SUPERQUANT_LIBTORCH / SuperQuantLibTorchDir names a folder without libtorch.</summary>
    public const string LibTorchFolder = "SQ0002";
    /// <summary>The run was cancelled (Ctrl+C); nothing from it was shipped.</summary>
    public const string Cancelled = "SQ0008";
    /// <summary>The machine ran out of memory for this model.</summary>
    public const string OutOfMemory = "SQ0009";
    public const string GateFailed = "SQ1001";
    public const string CheckpointFormat = "SQ2001";
    public const string CheckpointMissingTensor = "SQ2002";
    public const string UnsupportedArchitecture = "SQ2003";
    public const string ConfigInvalid = "SQ2004";
    public const string FileNotFound = "SQ2005";
    public const string TokenizerUnsupported = "SQ2006";
    public const string TokenFileInvalid = "SQ2007";
    public const string NonFiniteWeights = "SQ2008";
    public const string InvalidArgument = "SQ2009";
    /// <summary>A zero-shot task file (JSONL) is malformed: the message names the file, line and field.</summary>
    public const string TaskFileInvalid = "SQ2010";
    public const string UnsupportedQuantization = "SQ4001";
    public const string ArtifactFormat = "SQ4002";
    public const string ArtifactWrite = "SQ4003";
    public const string DiskFull = "SQ4004";
    /// <summary>Warning: the runtime a GGUF is written for cannot express a feature of the checkpoint (e.g. llama.cpp runs
    /// Mistral without its sliding window); the gate measures what the runtime computes.</summary>
    public const string RuntimeDiffers = "SQ4005";
}

/// <summary>An expected failure with a code and, when known, the offending file and item (tensor, key).</summary>
public class SuperQuantException : Exception
{
    public string Code { get; }
    public string? FilePath { get; }

    public SuperQuantException(string code, string message, string? filePath = null, Exception? inner = null)
        : base(message, inner)
    {
        Code = code;
        FilePath = filePath;
    }

    public override string ToString() => FilePath is null ? $"{Code}: {Message}" : $"{FilePath}: {Code}: {Message}";
}
