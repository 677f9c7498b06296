using TorchSharp;

namespace SuperQuant.Core;

public enum DevicePreference { Auto, Cpu, Cuda }

/// <summary>Whether CUDA can be used. An interface so device selection is testable on machines without a GPU.</summary>
public interface ICudaProbe
{
    bool IsAvailable();
}

public sealed class TorchCudaProbe : ICudaProbe
{
    public bool IsAvailable() => torch.cuda.is_available();
}

/// <summary>Chooses the torch device: an explicit preference wins, then SUPERQUANT_DEVICE, then CUDA when visible.</summary>
public static class ComputeDevice
{
    public const string EnvironmentVariable = "SUPERQUANT_DEVICE";

    public static DevicePreference Parse(string? text, string source) => text?.Trim().ToLowerInvariant() switch
    {
        null or "" or "auto" => DevicePreference.Auto,
        "cpu" => DevicePreference.Cpu,
        "cuda" or "gpu" => DevicePreference.Cuda,
        _ => throw new SuperQuantException(ErrorCodes.InvalidArgument, $"{source}: unknown device '{text}' (expected auto, cpu or cuda)"),
    };

    /// <summary>Returns "cpu" or "cuda" and why.</summary>
    public static (DeviceType Type, string Reason) Resolve(DevicePreference requested, string? environment, ICudaProbe probe)
    {
        DevicePreference pref = requested != DevicePreference.Auto ? requested : Parse(environment, EnvironmentVariable);
        string source = requested != DevicePreference.Auto ? "requested" : pref != DevicePreference.Auto ? $"{EnvironmentVariable}={environment}" : "auto";
        switch (pref)
        {
            case DevicePreference.Cpu:
                return (DeviceType.CPU, $"cpu ({source})");
            case DevicePreference.Cuda:
                if (!probe.IsAvailable())
                    throw new SuperQuantException(ErrorCodes.InvalidArgument,
                        $"cuda was {source} but TorchSharp sees no CUDA device (build with -p:SuperQuantBackend=cuda on a machine with a GPU)");
                return (DeviceType.CUDA, $"cuda ({source})");
            default:
                return probe.IsAvailable() ? (DeviceType.CUDA, "cuda (auto: CUDA visible)") : (DeviceType.CPU, "cpu (auto: no CUDA device visible)");
        }
    }
}
