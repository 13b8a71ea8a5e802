using QuantSharp.Selection;

namespace QuantSharp.Tests.Selection;

// Expectations follow Python's fnmatch.fnmatchcase rules (the semantics optimum-quanto's include/exclude use),
// derived from its definition: '*' any run (also '.'), '?' one char, [seq], [!seq], whole-name, case-sensitive.
public class GlobTests
{
    [Theory]
    [InlineData("*.weight", "model.layers.0.mlp.up_proj.weight", true)]
    [InlineData("*.weight", "model.layers.0.mlp.up_proj.bias", false)]
    [InlineData("*.weight", "weight", false)]
    [InlineData("lm_head.weight", "lm_head.weight", true)]
    [InlineData("lm_head.weight", "lm_headXweight", false)]
    [InlineData("lm_head.weight", "model.lm_head.weight", false)]
    [InlineData("model.layers.*.mlp.*", "model.layers.11.mlp.down_proj.weight", true)]
    [InlineData("model.layers.?.mlp.*", "model.layers.11.mlp.down_proj.weight", false)]
    [InlineData("model.layers.?.mlp.*", "model.layers.1.mlp.down_proj.weight", true)]
    [InlineData("model.layers.[0-2].*", "model.layers.2.x", true)]
    [InlineData("model.layers.[0-2].*", "model.layers.3.x", false)]
    [InlineData("model.layers.[!0-2].*", "model.layers.3.x", true)]
    [InlineData("*norm*", "model.layers.0.input_layernorm.weight", true)]
    [InlineData("*NORM*", "model.layers.0.input_layernorm.weight", false)]
    [InlineData("a+b(c)", "a+b(c)", true)]
    [InlineData("a+b(c)", "aab(c)", false)]
    [InlineData("**", "anything.at.all", true)]
    [InlineData("x[]]y", "x]y", true)]
    public void MatchesLikeFnmatch(string pattern, string name, bool expected)
        => Assert.Equal(expected, new Glob(pattern).IsMatch(name));

    [Fact]
    public void ExcludeWinsOverInclude()
    {
        var include = new[] { new Glob("*.weight") };
        var exclude = new[] { new Glob("lm_head.*") };
        Assert.True(Glob.IsSelected("a.weight", include, exclude));
        Assert.False(Glob.IsSelected("lm_head.weight", include, exclude));
        Assert.True(Glob.IsSelected("anything", [], []));
        Assert.False(Glob.IsSelected("anything", [], exclude.Append(new Glob("any*")).ToArray()));
    }

    [Fact]
    public void BadPatternsAreRefusedWithTheirPosition()
    {
        var ex = Assert.Throws<ArgumentException>(() => new Glob("layers.[0-2"));
        Assert.Contains("unclosed '['", ex.Message);
        Assert.Throws<ArgumentException>(() => new Glob(""));
    }
}
