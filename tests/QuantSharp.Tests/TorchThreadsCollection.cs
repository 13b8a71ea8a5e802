namespace QuantSharp.Tests;

/// <summary>
/// Tests that change libtorch's process-wide thread count (<c>torch.set_num_threads</c>: the QAT, GPTQ and 2-bit tests
/// train single-threaded to be deterministic; <c>quantsharp bench --threads</c> sets and restores it). Float sums in
/// libtorch's CPU ops depend on the thread count, so a test that runs a model twice and expects the same bits would
/// see different last bits if one of these ran beside it. This collection runs alone, after the parallel tests.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class TorchThreadsCollection
{
    /// <summary>The collection's name.</summary>
    public const string Name = "Torch thread count (process-wide)";
}
