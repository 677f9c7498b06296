namespace SuperQuant.Core.Evaluation;

/// <summary>Mean and standard error of a stream of values (Welford's algorithm: one pass, numerically stable).</summary>
public sealed class RunningStat
{
    long _n;
    double _mean, _m2;

    public long Count => _n;
    public double Mean => _mean;
    /// <summary>Standard error of the mean (sample standard deviation / sqrt(n)); 0 for fewer than two values.</summary>
    public double StandardError => _n < 2 ? 0 : Math.Sqrt(_m2 / (_n - 1) / _n);

    public void Add(double x)
    {
        _n++;
        double d = x - _mean;
        _mean += d / _n;
        _m2 += d * (x - _mean);
    }
}

/// <summary>A measured value with its standard error.</summary>
public readonly record struct Estimate(double Value, double StandardError)
{
    public override string ToString() => $"{Value:G6} +/- {StandardError:G3}";
}
