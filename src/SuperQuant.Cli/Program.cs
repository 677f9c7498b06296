using TorchSharp;
var a = torch.randn(2048, 2048); var sw = System.Diagnostics.Stopwatch.StartNew();
for (int i = 0; i < 5; i++) torch.matmul(a, a).Dispose();
System.Console.WriteLine($"{5*2.0*2048*2048*2048/sw.Elapsed.TotalSeconds/1e9:F1} GFLOP/s cuda={torch.cuda.is_available()} threads={torch.get_num_threads()}");
