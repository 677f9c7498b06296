using System.Diagnostics;

namespace SuperQuant.Core;

/// <summary>One timed step of a run: wall time and the process's peak resident memory during it.</summary>
public sealed record StepTiming(string Step, double Seconds, long PeakBytes);

/// <summary>
/// Where a long run reports: messages, progress with an ETA, and a table of per-step times and peak memory for the
/// report. The console implementation lives in the CLI; MSBuild shows the same lines as messages.
/// </summary>
public abstract class StepLog
{
    readonly List<StepTiming> _steps = new();
    public IReadOnlyList<StepTiming> Steps => _steps;

    public abstract void Info(string message);

    /// <summary>A progress callback (done, total) for a step that repeats work.</summary>
    public abstract Action<int, int> Progress(string label);

    /// <summary>Times a step; its peak memory is measured from the step's start (Linux: VmHWM reset).</summary>
    public IDisposable Step(string name) => new Timer(this, name);

    sealed class Timer : IDisposable
    {
        readonly StepLog _log;
        readonly string _name;
        readonly Stopwatch _clock = Stopwatch.StartNew();
        public Timer(StepLog log, string name) { _log = log; _name = name; ProcessMemory.ResetPeak(); }
        public void Dispose() => _log._steps.Add(new StepTiming(_name, _clock.Elapsed.TotalSeconds, ProcessMemory.Peak));
    }

    /// <summary>Discards everything (tests, --json runs).</summary>
    public static StepLog Silent { get; } = new SilentLog();

    sealed class SilentLog : StepLog
    {
        public override void Info(string message) { }
        public override Action<int, int> Progress(string label) => (_, _) => { };
    }
}
