using static SuperQuant.Models.Gguf.KQuantMath;

namespace SuperQuant.Models.Gguf;

/// <summary>
/// The lattice grids of the IQ2/IQ3 types (ggml-quants.c iq2xs_init_impl / iq3xs_init_impl). A grid point is a group of
/// <see cref="Dims"/> levels packed <see cref="LevelBits"/> bits apiece (data from ggml: kgrid_256 / kgrid_512 for
/// IQ3_XXS / IQ3_S, 4 levels of 3 bits; kgrid_2bit_1024 for IQ2_S, 8 levels of 2 bits), searched at positions 2l + 1.
/// Every level pattern the quantizers can produce maps to its grid index or, off the grid, to the grid points within
/// its <c>nwant</c> nearest squared distances, ordered by (distance, index) as ggml's qsort orders them, so the
/// best-neighbour search picks the same point ggml picks. Built once per grid, on first use.
/// </summary>
internal sealed class IQLattice
{
    static readonly ushort[] Grid3Bit256 =
    {
        0, 2, 4, 9, 11, 15, 16, 18, 25, 34, 59, 61, 65, 67, 72, 74,
        81, 85, 88, 90, 97, 108, 120, 128, 130, 132, 137, 144, 146, 153, 155, 159,
        169, 175, 189, 193, 199, 200, 202, 213, 248, 267, 287, 292, 303, 315, 317, 321,
        327, 346, 362, 413, 436, 456, 460, 462, 483, 497, 513, 515, 520, 522, 529, 531,
        536, 538, 540, 551, 552, 576, 578, 585, 592, 594, 641, 643, 648, 650, 657, 664,
        698, 704, 706, 720, 729, 742, 758, 769, 773, 808, 848, 852, 870, 889, 901, 978,
        992, 1024, 1026, 1033, 1035, 1040, 1042, 1046, 1049, 1058, 1089, 1091, 1093, 1096, 1098, 1105,
        1112, 1139, 1143, 1144, 1152, 1154, 1161, 1167, 1168, 1170, 1183, 1184, 1197, 1217, 1224, 1228,
        1272, 1276, 1309, 1323, 1347, 1367, 1377, 1404, 1473, 1475, 1486, 1509, 1537, 1544, 1546, 1553,
        1555, 1576, 1589, 1594, 1600, 1602, 1616, 1625, 1636, 1638, 1665, 1667, 1672, 1685, 1706, 1722,
        1737, 1755, 1816, 1831, 1850, 1856, 1862, 1874, 1901, 1932, 1950, 1971, 2011, 2032, 2052, 2063,
        2077, 2079, 2091, 2095, 2172, 2192, 2207, 2208, 2224, 2230, 2247, 2277, 2308, 2345, 2356, 2389,
        2403, 2424, 2501, 2504, 2506, 2520, 2570, 2593, 2616, 2624, 2630, 2646, 2669, 2700, 2714, 2746,
        2754, 2795, 2824, 2835, 2839, 2874, 2882, 2905, 2984, 3028, 3042, 3092, 3108, 3110, 3124, 3153,
        3185, 3215, 3252, 3288, 3294, 3364, 3397, 3434, 3483, 3523, 3537, 3587, 3589, 3591, 3592, 3610,
        3626, 3670, 3680, 3722, 3749, 3754, 3776, 3789, 3803, 3824, 3857, 3873, 3904, 3906, 3924, 3992,
    };
    static readonly ushort[] Grid3Bit512 =
    {
        0, 1, 2, 5, 7, 8, 9, 10, 12, 14, 16, 17, 21, 27, 32, 34,
        37, 39, 41, 43, 48, 50, 57, 60, 63, 64, 65, 66, 68, 72, 73, 77,
        80, 83, 87, 89, 93, 100, 113, 117, 122, 128, 129, 133, 135, 136, 139, 142,
        145, 149, 152, 156, 162, 165, 167, 169, 171, 184, 187, 195, 201, 205, 208, 210,
        217, 219, 222, 228, 232, 234, 247, 249, 253, 256, 267, 271, 273, 276, 282, 288,
        291, 297, 312, 322, 324, 336, 338, 342, 347, 353, 357, 359, 374, 379, 390, 393,
        395, 409, 426, 441, 448, 450, 452, 464, 466, 470, 475, 488, 492, 512, 513, 514,
        516, 520, 521, 523, 525, 527, 528, 530, 537, 540, 542, 556, 558, 561, 570, 576,
        577, 579, 582, 584, 588, 593, 600, 603, 609, 616, 618, 632, 638, 640, 650, 653,
        655, 656, 660, 666, 672, 675, 685, 688, 698, 705, 708, 711, 712, 715, 721, 727,
        728, 732, 737, 754, 760, 771, 773, 778, 780, 793, 795, 802, 806, 808, 812, 833,
        840, 843, 849, 856, 858, 873, 912, 916, 919, 932, 934, 961, 963, 968, 970, 977,
        989, 993, 1010, 1016, 1024, 1025, 1027, 1029, 1031, 1032, 1034, 1036, 1038, 1041, 1043, 1047,
        1048, 1050, 1057, 1059, 1061, 1064, 1066, 1079, 1080, 1083, 1085, 1088, 1090, 1096, 1099, 1103,
        1106, 1109, 1113, 1116, 1122, 1129, 1153, 1156, 1159, 1169, 1171, 1176, 1183, 1185, 1195, 1199,
        1209, 1212, 1216, 1218, 1221, 1225, 1234, 1236, 1241, 1243, 1250, 1256, 1270, 1281, 1287, 1296,
        1299, 1306, 1309, 1313, 1338, 1341, 1348, 1353, 1362, 1375, 1376, 1387, 1400, 1408, 1410, 1415,
        1425, 1453, 1457, 1477, 1481, 1494, 1496, 1507, 1512, 1538, 1545, 1547, 1549, 1551, 1554, 1561,
        1563, 1565, 1570, 1572, 1575, 1577, 1587, 1593, 1601, 1603, 1605, 1612, 1617, 1619, 1632, 1648,
        1658, 1662, 1664, 1674, 1680, 1690, 1692, 1704, 1729, 1736, 1740, 1745, 1747, 1751, 1752, 1761,
        1763, 1767, 1773, 1787, 1795, 1801, 1806, 1810, 1817, 1834, 1840, 1844, 1857, 1864, 1866, 1877,
        1882, 1892, 1902, 1915, 1934, 1953, 1985, 1987, 2000, 2002, 2013, 2048, 2052, 2058, 2064, 2068,
        2071, 2074, 2081, 2088, 2104, 2114, 2119, 2121, 2123, 2130, 2136, 2141, 2147, 2153, 2157, 2177,
        2179, 2184, 2189, 2193, 2203, 2208, 2223, 2226, 2232, 2244, 2249, 2251, 2256, 2258, 2265, 2269,
        2304, 2306, 2324, 2335, 2336, 2361, 2373, 2375, 2385, 2418, 2443, 2460, 2480, 2504, 2509, 2520,
        2531, 2537, 2562, 2568, 2572, 2578, 2592, 2596, 2599, 2602, 2614, 2620, 2625, 2627, 2629, 2634,
        2641, 2650, 2682, 2688, 2697, 2707, 2712, 2718, 2731, 2754, 2759, 2760, 2775, 2788, 2793, 2805,
        2811, 2817, 2820, 2832, 2842, 2854, 2890, 2902, 2921, 2923, 2978, 3010, 3012, 3026, 3081, 3083,
        3085, 3097, 3099, 3120, 3136, 3152, 3159, 3188, 3210, 3228, 3234, 3245, 3250, 3256, 3264, 3276,
        3281, 3296, 3349, 3363, 3378, 3392, 3395, 3420, 3440, 3461, 3488, 3529, 3531, 3584, 3588, 3591,
        3600, 3602, 3614, 3616, 3628, 3634, 3650, 3657, 3668, 3683, 3685, 3713, 3716, 3720, 3726, 3729,
        3736, 3753, 3778, 3802, 3805, 3819, 3841, 3845, 3851, 3856, 3880, 3922, 3938, 3970, 3993, 4032,
    };
    static readonly ushort[] Grid2Bit1024 =
    {
        0, 2, 5, 8, 10, 17, 20, 22, 25, 32, 34, 37, 40, 65, 68, 70,
        73, 80, 82, 85, 88, 97, 100, 102, 105, 128, 130, 133, 136, 145, 148, 160,
        165, 170, 257, 260, 262, 265, 272, 274, 277, 280, 289, 292, 320, 322, 325, 328,
        337, 340, 342, 345, 352, 357, 360, 385, 388, 400, 402, 405, 417, 420, 512, 514,
        517, 520, 529, 532, 544, 554, 577, 580, 582, 585, 592, 597, 640, 645, 650, 660,
        674, 1025, 1028, 1030, 1033, 1040, 1042, 1045, 1048, 1057, 1060, 1062, 1065, 1088, 1090, 1093,
        1096, 1098, 1105, 1108, 1110, 1113, 1120, 1122, 1125, 1153, 1156, 1158, 1161, 1168, 1173, 1176,
        1185, 1188, 1280, 1282, 1285, 1288, 1290, 1297, 1300, 1302, 1305, 1312, 1317, 1320, 1345, 1348,
        1350, 1353, 1360, 1362, 1365, 1368, 1377, 1380, 1408, 1410, 1413, 1416, 1425, 1428, 1440, 1537,
        1540, 1542, 1545, 1552, 1557, 1600, 1605, 1608, 1617, 1620, 1632, 1665, 1668, 1680, 2048, 2050,
        2053, 2056, 2065, 2068, 2070, 2073, 2080, 2085, 2090, 2113, 2116, 2118, 2121, 2128, 2130, 2133,
        2136, 2145, 2148, 2176, 2181, 2196, 2218, 2305, 2308, 2320, 2322, 2325, 2328, 2337, 2368, 2373,
        2376, 2385, 2388, 2400, 2433, 2448, 2560, 2577, 2580, 2594, 2600, 2602, 2640, 2713, 4097, 4100,
        4102, 4105, 4112, 4114, 4117, 4120, 4129, 4132, 4134, 4160, 4162, 4165, 4168, 4177, 4180, 4182,
        4185, 4192, 4194, 4197, 4200, 4225, 4228, 4230, 4240, 4245, 4248, 4257, 4260, 4352, 4354, 4357,
        4360, 4362, 4369, 4372, 4374, 4377, 4384, 4386, 4389, 4392, 4417, 4420, 4422, 4425, 4432, 4434,
        4437, 4440, 4449, 4452, 4480, 4482, 4485, 4488, 4497, 4500, 4609, 4612, 4617, 4624, 4629, 4641,
        4644, 4672, 4677, 4689, 4692, 4737, 4740, 4752, 5120, 5122, 5125, 5128, 5137, 5140, 5142, 5145,
        5152, 5157, 5160, 5185, 5188, 5190, 5193, 5200, 5202, 5205, 5208, 5217, 5220, 5248, 5250, 5253,
        5256, 5265, 5268, 5280, 5377, 5380, 5382, 5385, 5392, 5394, 5397, 5400, 5409, 5412, 5440, 5442,
        5445, 5448, 5457, 5460, 5472, 5505, 5508, 5520, 5632, 5637, 5640, 5649, 5652, 5664, 5697, 5700,
        5712, 5760, 5802, 6145, 6148, 6150, 6153, 6160, 6165, 6168, 6177, 6208, 6210, 6213, 6216, 6225,
        6228, 6240, 6273, 6276, 6400, 6402, 6405, 6408, 6417, 6420, 6432, 6465, 6468, 6480, 6505, 6562,
        6660, 6672, 6720, 6742, 8192, 8194, 8197, 8200, 8209, 8212, 8214, 8217, 8224, 8229, 8234, 8257,
        8260, 8272, 8274, 8277, 8292, 8320, 8330, 8340, 8362, 8449, 8452, 8464, 8466, 8469, 8481, 8512,
        8514, 8517, 8529, 8532, 8544, 8577, 8580, 8592, 8704, 8714, 8738, 8744, 8746, 8772, 8784, 8840,
        8842, 8872, 9217, 9220, 9222, 9225, 9232, 9237, 9240, 9249, 9252, 9280, 9282, 9285, 9288, 9297,
        9300, 9312, 9345, 9348, 9360, 9472, 9477, 9480, 9489, 9492, 9504, 9537, 9540, 9552, 9574, 9600,
        9729, 9732, 9744, 9792, 9817, 10240, 10245, 10257, 10260, 10305, 10308, 10320, 10378, 10410, 10497, 10500,
        10512, 10645, 10762, 10786, 10852, 10888, 10890, 16385, 16388, 16390, 16393, 16400, 16402, 16405, 16408, 16410,
        16417, 16420, 16422, 16448, 16450, 16453, 16456, 16458, 16465, 16468, 16470, 16473, 16480, 16482, 16485, 16513,
        16516, 16528, 16533, 16536, 16545, 16548, 16640, 16642, 16645, 16648, 16657, 16660, 16662, 16665, 16672, 16674,
        16677, 16705, 16708, 16710, 16713, 16720, 16722, 16725, 16728, 16737, 16740, 16768, 16770, 16773, 16776, 16785,
        16788, 16800, 16897, 16900, 16912, 16914, 16917, 16920, 16932, 16960, 16965, 16968, 16977, 16980, 16992, 17025,
        17028, 17408, 17410, 17413, 17416, 17418, 17425, 17428, 17430, 17433, 17440, 17442, 17445, 17448, 17473, 17476,
        17478, 17481, 17488, 17490, 17493, 17496, 17505, 17508, 17536, 17538, 17541, 17544, 17553, 17556, 17568, 17665,
        17668, 17670, 17673, 17680, 17682, 17685, 17688, 17697, 17700, 17728, 17730, 17733, 17736, 17745, 17748, 17760,
        17770, 17793, 17796, 17808, 17920, 17922, 17925, 17928, 17937, 17940, 17952, 17985, 17988, 18000, 18048, 18085,
        18433, 18436, 18441, 18448, 18450, 18453, 18456, 18465, 18468, 18496, 18498, 18501, 18504, 18513, 18516, 18528,
        18564, 18576, 18688, 18690, 18693, 18696, 18705, 18708, 18720, 18753, 18756, 18768, 18816, 18838, 18945, 18948,
        18960, 19008, 20480, 20482, 20485, 20488, 20497, 20500, 20502, 20505, 20512, 20514, 20517, 20520, 20545, 20548,
        20550, 20553, 20560, 20562, 20565, 20568, 20577, 20580, 20608, 20610, 20613, 20616, 20625, 20628, 20737, 20740,
        20742, 20745, 20752, 20754, 20757, 20760, 20769, 20772, 20800, 20802, 20805, 20808, 20817, 20820, 20832, 20865,
        20868, 20880, 20992, 20997, 21000, 21009, 21012, 21024, 21057, 21060, 21072, 21097, 21120, 21505, 21508, 21510,
        21513, 21520, 21522, 21525, 21528, 21537, 21540, 21568, 21570, 21573, 21576, 21585, 21588, 21600, 21633, 21636,
        21648, 21760, 21762, 21765, 21768, 21777, 21780, 21792, 21825, 21828, 21840, 21888, 22017, 22020, 22032, 22054,
        22080, 22528, 22530, 22533, 22536, 22545, 22548, 22560, 22593, 22596, 22608, 22618, 22656, 22785, 22788, 22800,
        22848, 23040, 23065, 23173, 23208, 24577, 24580, 24582, 24592, 24594, 24597, 24600, 24609, 24612, 24640, 24645,
        24648, 24657, 24660, 24672, 24708, 24720, 24832, 24834, 24837, 24840, 24849, 24852, 24864, 24897, 24900, 24912,
        24960, 24985, 25092, 25104, 25152, 25174, 25249, 25600, 25605, 25608, 25617, 25620, 25632, 25665, 25668, 25680,
        25728, 25857, 25860, 25872, 25920, 25930, 25960, 26002, 26112, 26260, 26625, 26628, 26640, 26725, 26776, 26880,
        26922, 27202, 27297, 32768, 32770, 32773, 32776, 32785, 32788, 32793, 32800, 32805, 32833, 32836, 32848, 32850,
        32853, 32856, 32865, 32896, 32901, 32913, 32916, 33025, 33028, 33033, 33040, 33042, 33045, 33048, 33057, 33060,
        33088, 33090, 33093, 33096, 33105, 33108, 33153, 33156, 33168, 33193, 33280, 33285, 33290, 33297, 33300, 33345,
        33348, 33360, 33793, 33796, 33798, 33801, 33808, 33810, 33813, 33816, 33825, 33856, 33858, 33861, 33864, 33873,
        33876, 33888, 33921, 33924, 33936, 34048, 34050, 34053, 34056, 34065, 34068, 34080, 34113, 34116, 34128, 34176,
        34186, 34305, 34308, 34320, 34345, 34368, 34816, 34821, 34833, 34836, 34881, 34884, 34896, 34978, 35073, 35076,
        35136, 35173, 35362, 35416, 35418, 35458, 35490, 36865, 36868, 36873, 36880, 36882, 36885, 36888, 36900, 36928,
        36930, 36933, 36936, 36945, 36948, 36960, 36993, 36996, 37008, 37120, 37125, 37137, 37140, 37185, 37188, 37200,
        37210, 37377, 37380, 37392, 37440, 37542, 37888, 37890, 37893, 37896, 37905, 37908, 37920, 37953, 37956, 37968,
        38016, 38038, 38145, 38148, 38160, 38208, 38296, 38305, 38400, 38470, 38500, 38913, 38916, 38928, 38950, 38976,
        39081, 39168, 39241, 39250, 39568, 40960, 40965, 40970, 40980, 40994, 41002, 41025, 41028, 41040, 41122, 41130,
        41280, 41317, 41474, 41482, 41506, 41512, 41514, 41602, 41608, 41610, 41640, 41985, 41988, 42000, 42048, 42121,
        42148, 42240, 42265, 42577, 43018, 43048, 43170, 43348, 43398, 43528, 43530, 43552, 43554, 43560, 43656, 43690,
    };

    static readonly Lazy<IQLattice> Iq3Xxs = new(() => new IQLattice(Grid3Bit256, 4, 3, nwant: 2, maxLevel: 7));
    static readonly Lazy<IQLattice> Iq3S = new(() => new IQLattice(Grid3Bit512, 4, 3, nwant: 3, maxLevel: 7));
    static readonly Lazy<IQLattice> Iq2S = new(() => new IQLattice(Grid2Bit1024, 8, 2, nwant: 1, maxLevel: 2));
    public static IQLattice IQ3_XXS => Iq3Xxs.Value;
    public static IQLattice IQ3_S => Iq3S.Value;
    public static IQLattice IQ2_S => Iq2S.Value;
    public static ushort[] PackedGrid(GgmlType type) => type switch
    {
        GgmlType.IQ3_XXS => Grid3Bit256,
        GgmlType.IQ3_S => Grid3Bit512,
        GgmlType.IQ2_S => Grid2Bit1024,
        _ => throw new ArgumentOutOfRangeException(nameof(type)),
    };

    public readonly int Dims, LevelBits;
    /// <summary>Per grid point, its levels.</summary>
    public readonly byte[][] Levels;
    /// <summary>Per level pattern, its grid index, or -(offset + 1) into <see cref="Neighbours"/>.</summary>
    readonly int[] _map;
    /// <summary>At each offset: a count n, then n grid indices.</summary>
    readonly ushort[] _neighbours;

    /// <param name="maxLevel">The highest level the quantizer produces (kMaxQ - 1): patterns with higher levels are never
    /// looked up and get no neighbour list.</param>
    IQLattice(ushort[] kgrid, int dims, int levelBits, int nwant, int maxLevel)
    {
        Dims = dims; LevelBits = levelBits;
        int mask = (1 << levelBits) - 1, gridSize = kgrid.Length;
        Levels = kgrid.Select(k => Enumerable.Range(0, dims).Select(i => (byte)((k >> (levelBits * i)) & mask)).ToArray()).ToArray();
        _map = new int[1 << (dims * levelBits)];
        Array.Fill(_map, -1);
        for (int i = 0; i < gridSize; ++i) _map[kgrid[i]] = i;
        var list = new List<ushort>();
        var d2 = new int[gridSize];
        var distinct = new SortedSet<int>();
        for (int u = 0; u < _map.Length; ++u)
        {
            if (_map[u] >= 0) continue;
            bool reachable = true;
            for (int k = 0; k < dims; ++k) reachable &= ((u >> (levelBits * k)) & mask) <= maxLevel;
            if (!reachable) continue;
            distinct.Clear();
            for (int j = 0; j < gridSize; ++j)
            {
                int d = 0;
                for (int k = 0; k < dims; ++k)
                {
                    int diff = 2 * Levels[j][k] - 2 * ((u >> (levelBits * k)) & mask); // (2l+1) - (2m+1)
                    d += diff * diff;
                }
                d2[j] = d;
                distinct.Add(d);
                if (distinct.Count > nwant) distinct.Remove(distinct.Max);
            }
            _map[u] = -(list.Count + 1);
            int start = list.Count;
            list.Add(0);
            // ggml sorts by (distance, index) and keeps every point up to the nwant-th distinct distance.
            foreach (int d in distinct)
                for (int j = 0; j < gridSize; ++j)
                    if (d2[j] == d) list.Add((ushort)j);
            list[start] = (ushort)(list.Count - start - 1);
        }
        _neighbours = list.ToArray();
    }

    /// <summary>The grid index of the level group <paramref name="L"/>, snapped to its best neighbour (lowest weighted
    /// squared error at <paramref name="scale"/>, iq2/iq3_find_best_neighbour) when off the grid; the neighbour's
    /// levels are written back to <paramref name="L"/>.</summary>
    public int Snap(Span<sbyte> L, ReadOnlySpan<float> xval, ReadOnlySpan<float> weight, float scale, out bool onGrid)
    {
        int index = _map[Pattern(L)];
        onGrid = index >= 0;
        if (onGrid) return index;
        int gridIndex = BestNeighbour(-index - 1, xval, weight, scale, SearchPositions);
        for (int i = 0; i < Dims; ++i) L[i] = (sbyte)Levels[gridIndex][i];
        return gridIndex;
    }

    /// <summary>The search's position of each level: 2l + 1.</summary>
    static readonly float[] SearchPositions = { 1, 3, 5, 7, 9, 11, 13, 15 };

    /// <summary>Among the neighbours listed at <paramref name="offset"/>, the grid point with the lowest weighted squared
    /// error when level l stands for scale * <paramref name="levelValues"/>[l] (the first such point on ties).</summary>
    int BestNeighbour(int offset, ReadOnlySpan<float> target, ReadOnlySpan<float> weight, float scale, ReadOnlySpan<float> levelValues)
    {
        int count = _neighbours[offset], gridIndex = -1;
        float bestD2 = float.MaxValue;
        for (int j = 1; j <= count; ++j)
        {
            var pg = Levels[_neighbours[offset + j]];
            float d2 = 0;
            for (int i = 0; i < Dims; ++i)
            {
                float diff = scale * levelValues[pg[i]] - target[i];
                d2 += weight[i] * diff * diff;
            }
            if (d2 < bestD2) { bestD2 = d2; gridIndex = _neighbours[offset + j]; }
        }
        return gridIndex;
    }

    /// <summary>The grid point nearest (weighted) to the magnitudes <paramref name="target"/> when a level l stands for
    /// scale * <paramref name="levelValues"/>[l] (the format's dequantized values, which the search's 2l + 1 only
    /// approximates): each level rounded to its nearest value, then, off the grid, the pattern's neighbours compared by
    /// that exact error. For error-compensated rows, which choose one group at a time.</summary>
    public int Nearest(ReadOnlySpan<float> target, ReadOnlySpan<float> weight, float scale, float[] levelValues, int maxLevel)
    {
        Span<sbyte> L = stackalloc sbyte[Dims];
        for (int i = 0; i < Dims; ++i)
        {
            int best = 0;
            for (int l = 1; l <= maxLevel; ++l)
                if (Math.Abs(scale * levelValues[l] - target[i]) < Math.Abs(scale * levelValues[best] - target[i])) best = l;
            L[i] = (sbyte)best;
        }
        int index = _map[Pattern(L)];
        return index >= 0 ? index : BestNeighbour(-index - 1, target, weight, scale, levelValues);
    }

    /// <summary>Splits a block into magnitudes <paramref name="xval"/> and one byte of sign bits per 8 weights.</summary>
    public static void SplitSigns(ReadOnlySpan<float> xb, Span<float> xval, Span<byte> signs)
    {
        for (int k = 0; k < xb.Length / 8; ++k)
        {
            int s = 0;
            for (int i = 0; i < 8; ++i)
            {
                if (xb[8 * k + i] >= 0) xval[8 * k + i] = xb[8 * k + i];
                else { xval[8 * k + i] = -xb[8 * k + i]; s |= 1 << i; }
            }
            signs[k] = (byte)s;
        }
    }

    int Pattern(ReadOnlySpan<sbyte> L)
    {
        int u = 0;
        for (int i = 0; i < Dims; ++i) u |= L[i] << (LevelBits * i);
        return u;
    }

    /// <summary>The grid index of a level group already on the grid.</summary>
    public int IndexOf(ReadOnlySpan<sbyte> L)
    {
        int index = _map[Pattern(L)];
        if (index < 0) throw new InvalidOperationException($"level pattern {Pattern(L)} is not on the grid");
        return index;
    }

    /// <summary>ksigns_iq2xs: 7 sign bits and their parity as the 8th.</summary>
    public static byte Signs(int sevenBits) => (byte)(sevenBits | ((System.Numerics.BitOperations.PopCount((uint)sevenBits) & 1) << 7));

    /// <summary>The scale search every lattice type runs on one block (made non-negative in <paramref name="xval"/>):
    /// 2 * steps + 1 inverse scales (2 kMaxQ - 1 + step * stepSize) / max, each block snapped to the lattice and scored
    /// by the weighted fit sum(w x q)^2 / sum(w q^2); the best one's off-grid groups (or all groups:
    /// <paramref name="refitAll"/>) are snapped again at the fitted scale, and the scale refitted. Returns the scale; the
    /// levels in <paramref name="L"/> (zeros on entry).</summary>
    public float SearchBlock(ReadOnlySpan<float> xval, ReadOnlySpan<float> weight, ReadOnlySpan<float> waux, Span<sbyte> L,
        int kMaxQ, int steps, float stepSize, bool initialOnGrid, bool refitAll)
    {
        int n = xval.Length, groups = n / Dims;
        Span<sbyte> Laux = stackalloc sbyte[n];
        Span<bool> onGrid = stackalloc bool[groups];
        Span<bool> onGridAux = stackalloc bool[groups];
        float max = xval[0];
        for (int i = 1; i < n; ++i) max = Math.Max(max, xval[i]);
        float best = 0;
        float scale = max / (2 * kMaxQ - 1);
        onGrid.Fill(initialOnGrid);
        for (int step = -steps; step <= steps; ++step)
        {
            float id = (2 * kMaxQ - 1 + step * stepSize) / max;
            float thisScale = 1 / id;
            for (int k = 0; k < groups; ++k)
            {
                for (int i = 0; i < Dims; ++i)
                {
                    int l = NearestInt(0.5f * (id * xval[Dims * k + i] - 1));
                    Laux[Dims * k + i] = (sbyte)Math.Max(0, Math.Min(kMaxQ - 1, l));
                }
                Snap(Laux.Slice(Dims * k, Dims), xval.Slice(Dims * k, Dims), waux.Slice(Dims * k, Dims), thisScale, out onGridAux[k]);
            }
            float sumqx = 0, sumq2 = 0;
            for (int i = 0; i < n; ++i)
            {
                float w = weight[i];
                float q = 2 * Laux[i] + 1;
                sumqx += w * xval[i] * q;
                sumq2 += w * q * q;
            }
            if (sumq2 > 0 && sumqx * sumqx > best * sumq2)
            {
                scale = sumqx / sumq2; best = scale * sumqx;
                Laux.CopyTo(L);
                onGridAux.CopyTo(onGrid);
            }
        }
        int notOnGrid = 0;
        for (int k = 0; k < groups; ++k) if (!onGrid[k]) ++notOnGrid;
        if (notOnGrid > 0 && scale > 0)
        {
            float id = 1 / scale;
            for (int k = 0; k < groups; ++k)
            {
                if (!refitAll && onGrid[k]) continue;
                for (int i = 0; i < Dims; ++i)
                {
                    int l = NearestInt(0.5f * (id * xval[Dims * k + i] - 1));
                    L[Dims * k + i] = (sbyte)Math.Max(0, Math.Min(kMaxQ - 1, l));
                }
                Snap(L.Slice(Dims * k, Dims), xval.Slice(Dims * k, Dims), waux.Slice(Dims * k, Dims), scale, out _);
            }
            float sumqx = 0, sumq2 = 0;
            for (int i = 0; i < n; ++i)
            {
                float w = weight[i];
                float q = 2 * L[i] + 1;
                sumqx += w * xval[i] * q;
                sumq2 += w * q * q;
            }
            if (sumq2 > 0) scale = sumqx / sumq2;
        }
        return scale;
    }

    /// <summary>Per block weights: imatrix * sqrt(sigma2 + x^2) with one, else <paramref name="plain"/>(x) (x^2 for IQ3,
    /// sigma2 / 4 + x^2 for IQ2_S); waux = sqrt(weight).</summary>
    public static void Weights(ReadOnlySpan<float> xb, ReadOnlySpan<float> qw, float sigma2, Span<float> weight, Span<float> waux, float plainSigma2Share = 0)
    {
        if (!qw.IsEmpty) for (int i = 0; i < xb.Length; ++i) weight[i] = qw[i] * MathF.Sqrt(sigma2 + xb[i] * xb[i]);
        else if (plainSigma2Share == 0) for (int i = 0; i < xb.Length; ++i) weight[i] = xb[i] * xb[i];
        else for (int i = 0; i < xb.Length; ++i) weight[i] = plainSigma2Share * sigma2 + xb[i] * xb[i];
        for (int i = 0; i < xb.Length; ++i) waux[i] = MathF.Sqrt(weight[i]);
    }
}
