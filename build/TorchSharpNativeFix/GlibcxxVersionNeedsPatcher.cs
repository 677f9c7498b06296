// Makes TorchSharp 0.107.0's native shim (libLibTorchSharp.so) load on distributions whose libstdc++ predates
// GCC 13 (Debian 12: up to GLIBCXX_3.4.30).
//
// Why by hand: the shim asks for GLIBCXX_3.4.32 only because GCC 13's <iostream> emits a reference to
// std::ios_base_library_init() (_ZSt21ios_base_library_initv), a link-time marker that nothing calls.
// patchelf is not installed on users' machines and no .NET library edits ELF version tables, so this file
// does the two small edits itself:
//   1. in .gnu.version_r, mark the GLIBCXX_3.4.32 requirement VER_FLG_WEAK (ld.so then only warns when the
//      version is missing instead of refusing to load), and
//   2. in .gnu.version, clear the version of the symbols bound to that requirement (patchelf's
//      --clear-symbol-version), so a lookup of the marker never asks for 3.4.32.
// It refuses to patch when any symbol other than the known marker needs that version: then the shim really uses
// GCC 13 code and weakening the requirement would only move the failure to run time.
//
// This file is compiled twice: into the build as an MSBuild inline task (build/TorchSharpNativeFix.targets) and
// into SuperQuant.Models (for `superquant doctor` and the tests), which defines SUPERQUANT_LIBRARY.
#nullable enable
using System;
using System.Collections.Generic;
using System.IO;
using System.Text;

namespace SuperQuant.NativeFix
{
    public enum PatchOutcome
    {
        /// <summary>The host libstdc++ already provides the version; nothing to do.</summary>
        HostHasVersion,
        /// <summary>The library does not ask for the version (or was patched before).</summary>
        NotNeeded,
        /// <summary>The library was rewritten.</summary>
        Patched,
        /// <summary>The requirement is used by real symbols; left untouched.</summary>
        Refused,
    }

    public static class GlibcxxVersionNeedsPatcher
    {
        public const string RequiredVersion = "GLIBCXX_3.4.32";
        public const string MarkerSymbol = "_ZSt21ios_base_library_initv";

        const uint ShtGnuVerdef = 0x6ffffffd;
        const uint ShtGnuVerneed = 0x6ffffffe;
        const uint ShtGnuVersym = 0x6fffffff;
        const ushort VerFlgWeak = 0x2;
        const ushort VerNdxGlobal = 1;

        /// <summary>Patches <paramref name="libraryPath"/> in place (via a temp file and a rename, so a process
        /// that has the old file mapped is not disturbed) when the host libstdc++ lacks <see cref="RequiredVersion"/>.</summary>
        public static PatchOutcome PatchIfNeeded(string libraryPath, string? hostLibStdCxx, out string message)
        {
            if (hostLibStdCxx != null && DefinesVersion(File.ReadAllBytes(hostLibStdCxx), RequiredVersion))
            {
                message = $"{hostLibStdCxx} provides {RequiredVersion}; {Path.GetFileName(libraryPath)} left as shipped";
                return PatchOutcome.HostHasVersion;
            }
            byte[] image = File.ReadAllBytes(libraryPath);
            PatchOutcome outcome = Patch(image, out message);
            if (outcome == PatchOutcome.Patched)
            {
                string temp = libraryPath + ".sqpatch.tmp";
                File.WriteAllBytes(temp, image);
                File.Replace(temp, libraryPath, null); // rename(2) on Unix: atomic, and safe for processes that map the old file
            }
            message = $"{libraryPath}: {message}";
            return outcome;
        }

        /// <summary>Edits an ELF64 little-endian image in memory. Idempotent: a patched image reports NotNeeded.</summary>
        public static PatchOutcome Patch(byte[] image, out string message)
        {
            var elf = new Elf64(image);
            Elf64.Section? verneed = elf.FindSection(ShtGnuVerneed);
            if (verneed == null)
            {
                message = "no .gnu.version_r section";
                return PatchOutcome.NotNeeded;
            }
            var aux = FindRequirement(elf, verneed.Value, RequiredVersion);
            if (aux == null)
            {
                message = $"does not require {RequiredVersion}";
                return PatchOutcome.NotNeeded;
            }
            (int auxOffset, ushort versionIndex) = aux.Value;
            ushort flags = elf.U16(auxOffset + 4);

            // Which dynamic symbols are bound to this requirement?
            var users = new List<(int versymOffset, string name)>();
            Elf64.Section? versym = elf.FindSection(ShtGnuVersym);
            if (versym != null)
            {
                Elf64.Section dynsym = elf.Sections[(int)versym.Value.Link];
                Elf64.Section dynstr = elf.Sections[(int)dynsym.Link];
                long count = versym.Value.Size / 2;
                for (int i = 0; i < count; i++)
                {
                    int off = checked((int)versym.Value.Offset + 2 * i);
                    if ((elf.U16(off) & 0x7fff) != versionIndex) continue;
                    uint nameIndex = elf.U32(checked((int)dynsym.Offset + 24 * i));
                    users.Add((off, elf.CString(checked((int)dynstr.Offset + (int)nameIndex))));
                }
            }
            foreach (var user in users)
            {
                if (user.name != MarkerSymbol)
                {
                    message = $"{RequiredVersion} is needed by {user.name}, not only by the {MarkerSymbol} marker; left untouched";
                    return PatchOutcome.Refused;
                }
            }
            if ((flags & VerFlgWeak) != 0 && users.Count == 0)
            {
                message = $"{RequiredVersion} requirement already weak";
                return PatchOutcome.NotNeeded;
            }
            elf.PutU16(auxOffset + 4, (ushort)(flags | VerFlgWeak));
            foreach (var user in users) elf.PutU16(user.versymOffset, VerNdxGlobal);
            message = $"marked {RequiredVersion} weak and cleared the version of {users.Count} marker symbol(s)";
            return PatchOutcome.Patched;
        }

        /// <summary>True when the library's .gnu.version_r still asks for <see cref="RequiredVersion"/> as a hard requirement.</summary>
        public static bool RequiresVersionStrictly(byte[] image)
        {
            var elf = new Elf64(image);
            Elf64.Section? verneed = elf.FindSection(ShtGnuVerneed);
            if (verneed == null) return false;
            var aux = FindRequirement(elf, verneed.Value, RequiredVersion);
            return aux != null && (elf.U16(aux.Value.auxOffset + 4) & VerFlgWeak) == 0;
        }

        /// <summary>True when the ELF image (a libstdc++) defines the version in .gnu.version_d.</summary>
        public static bool DefinesVersion(byte[] image, string version)
        {
            var elf = new Elf64(image);
            Elf64.Section? verdef = elf.FindSection(ShtGnuVerdef);
            if (verdef == null) return false;
            Elf64.Section strtab = elf.Sections[(int)verdef.Value.Link];
            int off = checked((int)verdef.Value.Offset);
            for (uint n = 0; n < verdef.Value.Info; n++)
            {
                // Elf64_Verdef: vd_version u16, vd_flags u16, vd_ndx u16, vd_cnt u16, vd_hash u32, vd_aux u32, vd_next u32
                uint vdAux = elf.U32(off + 12), vdNext = elf.U32(off + 16);
                uint nameIndex = elf.U32(checked(off + (int)vdAux)); // Elf64_Verdaux: vda_name u32, vda_next u32
                if (elf.CString(checked((int)strtab.Offset + (int)nameIndex)) == version) return true;
                if (vdNext == 0) break;
                off = checked(off + (int)vdNext);
            }
            return false;
        }

        /// <summary>The libstdc++ this process would use: the one already mapped (the dotnet host loads it), else the
        /// usual multiarch locations. Null when none is found (not Linux).</summary>
        public static string? FindHostLibStdCxx()
        {
            try
            {
                if (File.Exists("/proc/self/maps"))
                {
                    foreach (string line in File.ReadLines("/proc/self/maps"))
                    {
                        int slash = line.IndexOf('/');
                        if (slash >= 0 && line.IndexOf("libstdc++.so", slash, StringComparison.Ordinal) >= 0)
                            return line.Substring(slash).Trim();
                    }
                }
            }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
            foreach (string candidate in new[]
            {
                "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6",
                "/usr/lib/aarch64-linux-gnu/libstdc++.so.6", "/usr/lib64/libstdc++.so.6", "/usr/lib/libstdc++.so.6",
            })
            {
                if (File.Exists(candidate)) return candidate;
            }
            return null;
        }

        static (int auxOffset, ushort versionIndex)? FindRequirement(Elf64 elf, Elf64.Section verneed, string version)
        {
            Elf64.Section strtab = elf.Sections[(int)verneed.Link];
            int off = checked((int)verneed.Offset);
            for (uint n = 0; n < verneed.Info; n++)
            {
                // Elf64_Verneed: vn_version u16, vn_cnt u16, vn_file u32, vn_aux u32, vn_next u32
                ushort count = elf.U16(off + 2);
                uint vnAux = elf.U32(off + 8), vnNext = elf.U32(off + 12);
                int a = checked(off + (int)vnAux);
                for (int i = 0; i < count; i++)
                {
                    // Elf64_Vernaux: vna_hash u32, vna_flags u16, vna_other u16, vna_name u32, vna_next u32
                    uint nameIndex = elf.U32(a + 8);
                    if (elf.CString(checked((int)strtab.Offset + (int)nameIndex)) == version)
                        return (a, elf.U16(a + 6));
                    uint next = elf.U32(a + 12);
                    if (next == 0) break;
                    a = checked(a + (int)next);
                }
                if (vnNext == 0) break;
                off = checked(off + (int)vnNext);
            }
            return null;
        }

        /// <summary>Just enough of an ELF64 little-endian reader for the version tables; every read is bounds-checked.</summary>
        sealed class Elf64
        {
            public readonly struct Section
            {
                public Section(uint type, long offset, long size, uint link, uint info)
                { Type = type; Offset = offset; Size = size; Link = link; Info = info; }
                public uint Type { get; }
                public long Offset { get; }
                public long Size { get; }
                public uint Link { get; }
                public uint Info { get; }
            }

            readonly byte[] _b;
            public readonly Section[] Sections;

            public Elf64(byte[] image)
            {
                _b = image;
                if (image.Length < 64 || image[0] != 0x7f || image[1] != (byte)'E' || image[2] != (byte)'L' || image[3] != (byte)'F')
                    throw new InvalidDataException("not an ELF file");
                if (image[4] != 2 || image[5] != 1)
                    throw new InvalidDataException("only ELF64 little-endian is supported");
                long shoff = (long)U64(0x28);
                ushort shentsize = U16(0x3a), shnum = U16(0x3c);
                if (shentsize < 64) throw new InvalidDataException("bad section header size");
                Sections = new Section[shnum];
                for (int i = 0; i < shnum; i++)
                {
                    int h = checked((int)(shoff + (long)i * shentsize));
                    var s = new Section(U32(h + 4), (long)U64(h + 24), (long)U64(h + 32), U32(h + 40), U32(h + 44));
                    if (s.Type != 8 /* SHT_NOBITS */ && (s.Offset < 0 || s.Size < 0 || s.Offset + s.Size > image.Length))
                        throw new InvalidDataException($"section {i} lies outside the file");
                    Sections[i] = s;
                }
            }

            public Section? FindSection(uint type)
            {
                foreach (Section s in Sections) if (s.Type == type) return s;
                return null;
            }

            void Check(int offset, int size)
            {
                if (offset < 0 || offset + size > _b.Length) throw new InvalidDataException($"read past the end of the ELF file at {offset}");
            }
            public ushort U16(int o) { Check(o, 2); return (ushort)(_b[o] | _b[o + 1] << 8); }
            public uint U32(int o) { Check(o, 4); return (uint)(_b[o] | _b[o + 1] << 8 | _b[o + 2] << 16 | _b[o + 3] << 24); }
            public ulong U64(int o) { Check(o, 8); return U32(o) | (ulong)U32(o + 4) << 32; }
            public void PutU16(int o, ushort v) { Check(o, 2); _b[o] = (byte)v; _b[o + 1] = (byte)(v >> 8); }
            public string CString(int o)
            {
                Check(o, 1);
                int end = Array.IndexOf(_b, (byte)0, o);
                if (end < 0) throw new InvalidDataException("unterminated string in ELF string table");
                return Encoding.ASCII.GetString(_b, o, end - o);
            }
        }
    }

#if !SUPERQUANT_LIBRARY
    /// <summary>MSBuild entry point: patches each given libLibTorchSharp.so after it was copied to an output folder.</summary>
    public sealed class PatchTorchSharpNative : Microsoft.Build.Utilities.Task
    {
        [Microsoft.Build.Framework.Required]
        public Microsoft.Build.Framework.ITaskItem[] Files { get; set; } = Array.Empty<Microsoft.Build.Framework.ITaskItem>();

        public override bool Execute()
        {
            string? host = GlibcxxVersionNeedsPatcher.FindHostLibStdCxx();
            foreach (var item in Files)
            {
                string path = item.GetMetadata("FullPath");
                if (!File.Exists(path)) continue;
                try
                {
                    PatchOutcome outcome = GlibcxxVersionNeedsPatcher.PatchIfNeeded(path, host, out string message);
                    var importance = outcome == PatchOutcome.Patched
                        ? Microsoft.Build.Framework.MessageImportance.High
                        : Microsoft.Build.Framework.MessageImportance.Low;
                    if (outcome == PatchOutcome.Refused)
                        Log.LogWarning(null, "SQ0002", null, path, 0, 0, 0, 0, "TorchSharp native fix refused: {0}", message);
                    else
                        Log.LogMessage(importance, "SuperQuant TorchSharp native fix: {0}", message);
                }
                catch (Exception e) when (e is IOException || e is InvalidDataException || e is UnauthorizedAccessException)
                {
                    Log.LogError(null, "SQ0001", null, path, 0, 0, 0, 0, "could not patch the TorchSharp native shim: {0}", e.Message);
                }
            }
            return !Log.HasLoggedErrors;
        }
    }
#endif
}
