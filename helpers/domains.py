"""Per-dataset constants for the six zero-shot domains: class names, text templates, superclasses and
prompt-slot vocabulary for diverse synthetic-image prompts. Data only, no logic."""

# Dataset keys, in the order used throughout (CLIP_benchmark dataset names).
DATASETS = ("pets", "flowers", "cars", "food101", "dtd", "fgvc_aircraft")

# Class names in each dataset's label-index order, exactly as CLIP_benchmark 1.6.2 uses them with the
# torchvision loaders (see clip_benchmark/datasets/builder.py).
CLASSNAMES = {
    # torchvision OxfordIIITPet classes (title-cased breed names); identical to clip_benchmark en_classnames.json
    # "pets" (CLIP_benchmark 1.6.2 does not override them for the torchvision loader).
    "pets": [
        "Abyssinian", "American Bulldog", "American Pit Bull Terrier", "Basset Hound", "Beagle", "Bengal", "Birman",
        "Bombay", "Boxer", "British Shorthair", "Chihuahua", "Egyptian Mau", "English Cocker Spaniel", "English Setter",
        "German Shorthaired", "Great Pyrenees", "Havanese", "Japanese Chin", "Keeshond", "Leonberger", "Maine Coon",
        "Miniature Pinscher", "Newfoundland", "Persian", "Pomeranian", "Pug", "Ragdoll", "Russian Blue",
        "Saint Bernard", "Samoyed", "Scottish Terrier", "Shiba Inu", "Siamese", "Sphynx", "Staffordshire Bull Terrier",
        "Wheaten Terrier", "Yorkshire Terrier",
    ],
    # clip_benchmark 1.6.2 en_classnames.json "flowers" (builder.py overrides torchvision Flowers102 with it).
    "flowers": [
        "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold", "tiger lily",
        "moon orchid", "bird of paradise", "monkshood", "globe thistle", "snapdragon", "colt's foot", "king protea",
        "spear thistle", "yellow iris", "globe flower", "purple coneflower", "peruvian lily", "balloon flower",
        "giant white arum lily", "fire lily", "pincushion flower", "fritillary", "red ginger", "grape hyacinth",
        "corn poppy", "prince of wales feathers", "stemless gentian", "artichoke", "sweet william", "carnation",
        "garden phlox", "love in the mist", "mexican aster", "alpine sea holly", "ruby-lipped cattleya", "cape flower",
        "great masterwort", "siam tulip", "lenten rose", "barbeton daisy", "daffodil", "sword lily", "poinsettia",
        "bolero deep blue", "wallflower", "marigold", "buttercup", "oxeye daisy", "common dandelion", "petunia",
        "wild pansy", "primula", "sunflower", "pelargonium", "bishop of llandaff", "gaura", "geranium", "orange dahlia",
        "pink and yellow dahlia", "cautleya spicata", "japanese anemone", "black-eyed susan", "silverbush",
        "californian poppy", "osteospermum", "spring crocus", "bearded iris", "windflower", "tree poppy", "gazania",
        "azalea", "water lily", "rose", "thorn apple", "morning glory", "passion flower", "lotus", "toad lily",
        "anthurium", "frangipani", "clematis", "hibiscus", "columbine", "desert-rose", "tree mallow", "magnolia",
        "cyclamen", "watercress", "canna lily", "hippeastrum", "bee balm", "air plant", "foxglove", "bougainvillea",
        "camellia", "mallow", "mexican petunia", "bromelia", "blanket flower", "trumpet creeper", "blackberry lily",
    ],
    # torchvision StanfordCars: cars_meta.mat class_names in class-id order (make model type year).
    # Cross-checked: open-mmlab/mmpretrain mmcls/datasets/stanford_cars.py and an independent hard-coded copy.
    "cars": [
        "AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012", "Acura TL Type-S 2008",
        "Acura TSX Sedan 2012", "Acura Integra Type R 2001", "Acura ZDX Hatchback 2012",
        "Aston Martin V8 Vantage Convertible 2012", "Aston Martin V8 Vantage Coupe 2012",
        "Aston Martin Virage Convertible 2012", "Aston Martin Virage Coupe 2012", "Audi RS 4 Convertible 2008",
        "Audi A5 Coupe 2012", "Audi TTS Coupe 2012", "Audi R8 Coupe 2012", "Audi V8 Sedan 1994", "Audi 100 Sedan 1994",
        "Audi 100 Wagon 1994", "Audi TT Hatchback 2011", "Audi S6 Sedan 2011", "Audi S5 Convertible 2012",
        "Audi S5 Coupe 2012", "Audi S4 Sedan 2012", "Audi S4 Sedan 2007", "Audi TT RS Coupe 2012",
        "BMW ActiveHybrid 5 Sedan 2012", "BMW 1 Series Convertible 2012", "BMW 1 Series Coupe 2012",
        "BMW 3 Series Sedan 2012", "BMW 3 Series Wagon 2012", "BMW 6 Series Convertible 2007", "BMW X5 SUV 2007",
        "BMW X6 SUV 2012", "BMW M3 Coupe 2012", "BMW M5 Sedan 2010", "BMW M6 Convertible 2010", "BMW X3 SUV 2012",
        "BMW Z4 Convertible 2012", "Bentley Continental Supersports Conv. Convertible 2012",
        "Bentley Arnage Sedan 2009", "Bentley Mulsanne Sedan 2011", "Bentley Continental GT Coupe 2012",
        "Bentley Continental GT Coupe 2007", "Bentley Continental Flying Spur Sedan 2007",
        "Bugatti Veyron 16.4 Convertible 2009", "Bugatti Veyron 16.4 Coupe 2009", "Buick Regal GS 2012",
        "Buick Rainier SUV 2007", "Buick Verano Sedan 2012", "Buick Enclave SUV 2012", "Cadillac CTS-V Sedan 2012",
        "Cadillac SRX SUV 2012", "Cadillac Escalade EXT Crew Cab 2007", "Chevrolet Silverado 1500 Hybrid Crew Cab 2012",
        "Chevrolet Corvette Convertible 2012", "Chevrolet Corvette ZR1 2012",
        "Chevrolet Corvette Ron Fellows Edition Z06 2007", "Chevrolet Traverse SUV 2012",
        "Chevrolet Camaro Convertible 2012", "Chevrolet HHR SS 2010", "Chevrolet Impala Sedan 2007",
        "Chevrolet Tahoe Hybrid SUV 2012", "Chevrolet Sonic Sedan 2012", "Chevrolet Express Cargo Van 2007",
        "Chevrolet Avalanche Crew Cab 2012", "Chevrolet Cobalt SS 2010", "Chevrolet Malibu Hybrid Sedan 2010",
        "Chevrolet TrailBlazer SS 2009", "Chevrolet Silverado 2500HD Regular Cab 2012",
        "Chevrolet Silverado 1500 Classic Extended Cab 2007", "Chevrolet Express Van 2007",
        "Chevrolet Monte Carlo Coupe 2007", "Chevrolet Malibu Sedan 2007", "Chevrolet Silverado 1500 Extended Cab 2012",
        "Chevrolet Silverado 1500 Regular Cab 2012", "Chrysler Aspen SUV 2009", "Chrysler Sebring Convertible 2010",
        "Chrysler Town and Country Minivan 2012", "Chrysler 300 SRT-8 2010", "Chrysler Crossfire Convertible 2008",
        "Chrysler PT Cruiser Convertible 2008", "Daewoo Nubira Wagon 2002", "Dodge Caliber Wagon 2012",
        "Dodge Caliber Wagon 2007", "Dodge Caravan Minivan 1997", "Dodge Ram Pickup 3500 Crew Cab 2010",
        "Dodge Ram Pickup 3500 Quad Cab 2009", "Dodge Sprinter Cargo Van 2009", "Dodge Journey SUV 2012",
        "Dodge Dakota Crew Cab 2010", "Dodge Dakota Club Cab 2007", "Dodge Magnum Wagon 2008",
        "Dodge Challenger SRT8 2011", "Dodge Durango SUV 2012", "Dodge Durango SUV 2007", "Dodge Charger Sedan 2012",
        "Dodge Charger SRT-8 2009", "Eagle Talon Hatchback 1998", "FIAT 500 Abarth 2012", "FIAT 500 Convertible 2012",
        "Ferrari FF Coupe 2012", "Ferrari California Convertible 2012", "Ferrari 458 Italia Convertible 2012",
        "Ferrari 458 Italia Coupe 2012", "Fisker Karma Sedan 2012", "Ford F-450 Super Duty Crew Cab 2012",
        "Ford Mustang Convertible 2007", "Ford Freestar Minivan 2007", "Ford Expedition EL SUV 2009",
        "Ford Edge SUV 2012", "Ford Ranger SuperCab 2011", "Ford GT Coupe 2006", "Ford F-150 Regular Cab 2012",
        "Ford F-150 Regular Cab 2007", "Ford Focus Sedan 2007", "Ford E-Series Wagon Van 2012",
        "Ford Fiesta Sedan 2012", "GMC Terrain SUV 2012", "GMC Savana Van 2012", "GMC Yukon Hybrid SUV 2012",
        "GMC Acadia SUV 2012", "GMC Canyon Extended Cab 2012", "Geo Metro Convertible 1993", "HUMMER H3T Crew Cab 2010",
        "HUMMER H2 SUT Crew Cab 2009", "Honda Odyssey Minivan 2012", "Honda Odyssey Minivan 2007",
        "Honda Accord Coupe 2012", "Honda Accord Sedan 2012", "Hyundai Veloster Hatchback 2012",
        "Hyundai Santa Fe SUV 2012", "Hyundai Tucson SUV 2012", "Hyundai Veracruz SUV 2012",
        "Hyundai Sonata Hybrid Sedan 2012", "Hyundai Elantra Sedan 2007", "Hyundai Accent Sedan 2012",
        "Hyundai Genesis Sedan 2012", "Hyundai Sonata Sedan 2012", "Hyundai Elantra Touring Hatchback 2012",
        "Hyundai Azera Sedan 2012", "Infiniti G Coupe IPL 2012", "Infiniti QX56 SUV 2011", "Isuzu Ascender SUV 2008",
        "Jaguar XK XKR 2012", "Jeep Patriot SUV 2012", "Jeep Wrangler SUV 2012", "Jeep Liberty SUV 2012",
        "Jeep Grand Cherokee SUV 2012", "Jeep Compass SUV 2012", "Lamborghini Reventon Coupe 2008",
        "Lamborghini Aventador Coupe 2012", "Lamborghini Gallardo LP 570-4 Superleggera 2012",
        "Lamborghini Diablo Coupe 2001", "Land Rover Range Rover SUV 2012", "Land Rover LR2 SUV 2012",
        "Lincoln Town Car Sedan 2011", "MINI Cooper Roadster Convertible 2012", "Maybach Landaulet Convertible 2012",
        "Mazda Tribute SUV 2011", "McLaren MP4-12C Coupe 2012", "Mercedes-Benz 300-Class Convertible 1993",
        "Mercedes-Benz C-Class Sedan 2012", "Mercedes-Benz SL-Class Coupe 2009", "Mercedes-Benz E-Class Sedan 2012",
        "Mercedes-Benz S-Class Sedan 2012", "Mercedes-Benz Sprinter Van 2012", "Mitsubishi Lancer Sedan 2012",
        "Nissan Leaf Hatchback 2012", "Nissan NV Passenger Van 2012", "Nissan Juke Hatchback 2012",
        "Nissan 240SX Coupe 1998", "Plymouth Neon Coupe 1999", "Porsche Panamera Sedan 2012",
        "Ram C/V Cargo Van Minivan 2012", "Rolls-Royce Phantom Drophead Coupe Convertible 2012",
        "Rolls-Royce Ghost Sedan 2012", "Rolls-Royce Phantom Sedan 2012", "Scion xD Hatchback 2012",
        "Spyker C8 Convertible 2009", "Spyker C8 Coupe 2009", "Suzuki Aerio Sedan 2007", "Suzuki Kizashi Sedan 2012",
        "Suzuki SX4 Hatchback 2012", "Suzuki SX4 Sedan 2012", "Tesla Model S Sedan 2012", "Toyota Sequoia SUV 2012",
        "Toyota Camry Sedan 2012", "Toyota Corolla Sedan 2012", "Toyota 4Runner SUV 2012",
        "Volkswagen Golf Hatchback 2012", "Volkswagen Golf Hatchback 1991", "Volkswagen Beetle Hatchback 2012",
        "Volvo C30 Hatchback 2012", "Volvo 240 Sedan 1993", "Volvo XC90 SUV 2007", "smart fortwo Convertible 2012",
    ],
    # torchvision Food101: sorted(meta/<split>.json keys) with "_" -> " " (clip_benchmark builder.py).
    # Python sort puts "cheese plate" before "cheesecake" (meta/classes.txt has them the other way).
    "food101": [
        "apple pie", "baby back ribs", "baklava", "beef carpaccio", "beef tartare", "beet salad", "beignets",
        "bibimbap", "bread pudding", "breakfast burrito", "bruschetta", "caesar salad", "cannoli", "caprese salad",
        "carrot cake", "ceviche", "cheese plate", "cheesecake", "chicken curry", "chicken quesadilla", "chicken wings",
        "chocolate cake", "chocolate mousse", "churros", "clam chowder", "club sandwich", "crab cakes", "creme brulee",
        "croque madame", "cup cakes", "deviled eggs", "donuts", "dumplings", "edamame", "eggs benedict", "escargots",
        "falafel", "filet mignon", "fish and chips", "foie gras", "french fries", "french onion soup", "french toast",
        "fried calamari", "fried rice", "frozen yogurt", "garlic bread", "gnocchi", "greek salad",
        "grilled cheese sandwich", "grilled salmon", "guacamole", "gyoza", "hamburger", "hot and sour soup", "hot dog",
        "huevos rancheros", "hummus", "ice cream", "lasagna", "lobster bisque", "lobster roll sandwich",
        "macaroni and cheese", "macarons", "miso soup", "mussels", "nachos", "omelette", "onion rings", "oysters",
        "pad thai", "paella", "pancakes", "panna cotta", "peking duck", "pho", "pizza", "pork chop", "poutine",
        "prime rib", "pulled pork sandwich", "ramen", "ravioli", "red velvet cake", "risotto", "samosa", "sashimi",
        "scallops", "seaweed salad", "shrimp and grits", "spaghetti bolognese", "spaghetti carbonara", "spring rolls",
        "steak", "strawberry shortcake", "sushi", "tacos", "takoyaki", "tiramisu", "tuna tartare", "waffles",
    ],
    # torchvision DTD: sorted(set(folder names)) from labels/<split><partition>.txt.
    "dtd": [
        "banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked", "crosshatched",
        "crystalline", "dotted", "fibrous", "flecked", "freckled", "frilly", "gauzy", "grid", "grooved", "honeycombed",
        "interlaced", "knitted", "lacelike", "lined", "marbled", "matted", "meshed", "paisley", "perforated", "pitted",
        "pleated", "polka-dotted", "porous", "potholed", "scaly", "smeared", "spiralled", "sprinkled", "stained",
        "stratified", "striped", "studded", "swirly", "veined", "waffled", "woven", "wrinkled", "zigzagged",
    ],
    # torchvision FGVCAircraft(annotation_level="variant"): lines of data/variants.txt in file order.
    "fgvc_aircraft": [
        "707-320", "727-200", "737-200", "737-300", "737-400", "737-500", "737-600", "737-700", "737-800", "737-900",
        "747-100", "747-200", "747-300", "747-400", "757-200", "757-300", "767-200", "767-300", "767-400", "777-200",
        "777-300", "A300B4", "A310", "A318", "A319", "A320", "A321", "A330-200", "A330-300", "A340-200", "A340-300",
        "A340-500", "A340-600", "A380", "ATR-42", "ATR-72", "An-12", "BAE 146-200", "BAE 146-300", "BAE-125",
        "Beechcraft 1900", "Boeing 717", "C-130", "C-47", "CRJ-200", "CRJ-700", "CRJ-900", "Cessna 172", "Cessna 208",
        "Cessna 525", "Cessna 560", "Challenger 600", "DC-10", "DC-3", "DC-6", "DC-8", "DC-9-30", "DH-82", "DHC-1",
        "DHC-6", "DHC-8-100", "DHC-8-300", "DR-400", "Dornier 328", "E-170", "E-190", "E-195", "EMB-120", "ERJ 135",
        "ERJ 145", "Embraer Legacy 600", "Eurofighter Typhoon", "F-16A/B", "F/A-18", "Falcon 2000", "Falcon 900",
        "Fokker 100", "Fokker 50", "Fokker 70", "Global Express", "Gulfstream IV", "Gulfstream V", "Hawk T1", "Il-76",
        "L-1011", "MD-11", "MD-80", "MD-87", "MD-90", "Metroliner", "Model B200", "PA-28", "SR-20", "Saab 2000",
        "Saab 340", "Spitfire", "Tornado", "Tu-134", "Tu-154", "Yak-42",
    ],
}

# One zero-shot template per dataset, as the paper evaluates; "{c}" is the class name.
PAPER_TEMPLATES = {
    "pets": ["a photo of a {c}, a type of pet."],
    "flowers": ["a photo of a {c}, a type of flower."],
    "cars": ["a photo of a {c}, a type of car."],
    "food101": ["a photo of a {c}, a type of food."],
    "dtd": ["a photo of a {c} texture."],
    "fgvc_aircraft": ["a photo of a {c}, a type of aircraft."],
}

# Templates copied from clip_benchmark 1.6.2 en_zeroshot_classification_templates.json.
CLIP_BENCHMARK_TEMPLATES = {
    "pets": [
        "a photo of a {c}, a type of pet.",
    ],
    "flowers": [
        "a photo of a {c}, a type of flower.",
    ],
    "cars": [
        "a photo of a {c}.", "a photo of the {c}.", "a photo of my {c}.", "i love my {c}!", "a photo of my dirty {c}.",
        "a photo of my clean {c}.", "a photo of my new {c}.", "a photo of my old {c}.",
    ],
    "food101": [
        "a photo of {c}, a type of food.",
    ],
    "dtd": [
        "a photo of a {c} texture.", "a photo of a {c} pattern.", "a photo of a {c} thing.", "a photo of a {c} object.",
        "a photo of the {c} texture.", "a photo of the {c} pattern.", "a photo of the {c} thing.",
        "a photo of the {c} object.",
    ],
    "fgvc_aircraft": [
        "a photo of a {c}, a type of aircraft.", "a photo of the {c}, a type of aircraft.",
    ],
}

# One-word superclass per dataset (the paper's LLM names one per class), used in prompts.
SUPERCLASS = {
    "pets": "pet",
    "flowers": "flower",
    "cars": "car",
    "food101": "food",
    "dtd": "texture",
    "fgvc_aircraft": "aircraft",
}

# Prompt-slot vocabulary (the paper's attributes: location, time of day, a domain slot, camera angle).
# Written for this repo as fixed domain-level lists of 15 options each, instead of per-class LLM output;
# the domain slot is pose (pets), colour (cars, aircraft: any model comes in any paint), bloom (flowers: stage,
# number and arrangement of blooms; a colour slot would contradict species named by their colour, "a pink
# primrose ... in deep purple"), serving (food) or material (textures).
PROMPT_SLOTS = {
    "pets": {
        "location": [
            "in a living room", "on a sofa", "in a garden", "on a wooden porch", "in a park", "on a bed",
            "in a kitchen", "on a grassy lawn", "by a window", "on a sandy beach", "in a backyard", "on a soft rug",
            "in a forest clearing", "on a stone path", "in a snowy yard",
        ],
        "time": [
            "at sunset", "at sunrise", "in the morning", "at noon", "in the afternoon", "at dusk", "at night",
            "on a sunny day", "on a cloudy day", "on a rainy day", "on a snowy day", "in soft evening light",
            "in winter", "in autumn", "in summer",
        ],
        "pose": [
            "sleeping on its side", "sitting upright", "lying down", "standing still", "running across the grass",
            "playing with a toy", "yawning widely", "stretching its legs", "curled up asleep", "looking at the camera",
            "jumping in the air", "walking forward", "rolling on its back", "resting its head", "sniffing the ground",
        ],
        "angle": [
            "seen from above", "seen from the side", "seen from behind", "front view", "three-quarter view",
            "close-up portrait", "close-up of the face", "full body shot", "wide shot", "from a low angle",
            "from a high angle", "at eye level", "shallow depth of field", "centered in the frame",
            "off-center composition",
        ],
    },
    "flowers": {
        "location": [
            "in a backyard", "in a meadow", "in a clay pot", "in a glass vase", "in a greenhouse", "on a hillside",
            "by a stone wall", "in a forest", "at a market stall", "in a park", "on a windowsill", "in an open field",
            "by a pond", "along a country road", "in a raised bed",
        ],
        "time": [
            "at sunrise", "at sunset", "at midday", "in the afternoon", "at dusk", "on a cloudy day", "on a sunny day",
            "after the rain", "in early summer", "in late summer", "in autumn", "in bright daylight",
            "in soft evening light", "under an overcast sky", "on a breezy day",
        ],
        "bloom": [
            "in full bloom", "just beginning to open", "as a tight bud", "with dew drops on the petals",
            "a single bloom on its stem", "a pair of blooms", "a small cluster of blooms", "in a dense clump",
            "in a hand-tied bouquet", "with buds and open flowers together", "among its own leaves",
            "with a bee visiting it", "with a few fallen petals", "on a long slender stem",
            "growing in a large patch",
        ],
        "angle": [
            "seen from above", "seen from the side", "seen from below", "close-up macro shot",
            "extreme close-up of petals", "from a low angle", "from a high angle", "at eye level", "wide shot",
            "three-quarter view", "centered in the frame", "with a blurred background", "shallow depth of field",
            "off-center composition", "in sharp focus",
        ],
    },
    "cars": {
        "location": [
            "on a city street", "on a highway", "in a parking lot", "on a rural road", "in a driveway", "in a showroom",
            "on a mountain road", "in a garage", "on a race track", "by the beach", "on a desert road",
            "in a suburban neighborhood", "on a bridge", "at a gas station", "on a snowy road",
        ],
        "time": [
            "at sunset", "at sunrise", "at night", "at noon", "in the morning", "in the afternoon", "at dusk",
            "on a rainy day", "on a sunny day", "on a cloudy day", "on a foggy morning", "in winter", "in autumn",
            "in summer", "under streetlights at night",
        ],
        "colour": [
            "painted glossy black", "in metallic silver", "in bright red", "in pearl white", "in dark blue",
            "in charcoal gray", "in forest green", "in bright yellow", "in burnt orange", "in deep burgundy",
            "in champagne beige", "in sky blue", "in matte black", "in gunmetal gray", "in metallic bronze",
        ],
        "angle": [
            "front three-quarter view", "rear three-quarter view", "side profile view", "seen from the front",
            "seen from behind", "seen from above", "from a low angle", "from a high angle", "at eye level", "wide shot",
            "aerial view", "close-up of the grille", "close-up of the headlights", "centered in the frame",
            "shallow depth of field",
        ],
    },
    "food101": {
        "location": [
            "on a wooden table", "in a restaurant", "on a kitchen counter", "at a street food stall", "in a cafe",
            "on a picnic blanket", "at a dinner party", "on a marble countertop", "in a diner", "at a buffet",
            "on a restaurant terrace", "in a home kitchen", "at a food market", "on a rustic table", "at a bistro",
        ],
        "time": [
            "at lunchtime", "at dinner time", "in the morning", "at brunch", "in the evening", "at midday",
            "late at night", "on a sunny afternoon", "by candlelight", "in natural daylight", "at sunset",
            "on a holiday", "during a festival", "in warm evening light", "on a rainy day",
        ],
        "serving": [
            "on a porcelain dish", "in a ceramic bowl", "on a wooden board", "in a takeaway box", "on a slate platter",
            "in a cast iron skillet", "on a paper napkin", "in a bento box", "on a silver tray", "in a wicker basket",
            "on a banana leaf", "in a glass dish", "with chopsticks on the side", "with a fork and knife",
            "garnished with fresh herbs",
        ],
        "angle": [
            "seen from above", "overhead flat lay", "close-up shot", "from a low angle", "seen from the side",
            "at a 45-degree angle", "macro close-up", "wide shot of the table", "shallow depth of field",
            "centered in the frame", "with a blurred background", "at eye level", "three-quarter view",
            "in sharp focus", "slightly from above",
        ],
    },
    "dtd": {
        "location": [
            "on a wall", "on a fabric swatch", "on a floor", "on a tabletop", "on a garment", "on a cushion",
            "on a curtain", "on a tree trunk", "on a building facade", "on a rock surface", "on a vase",
            "on a wooden door", "on a handbag", "on a book cover", "on a ceiling",
        ],
        "time": [
            "in soft daylight", "under studio lighting", "in warm evening light", "in bright sunlight",
            "under overcast skies", "in dim indoor light", "under fluorescent light", "in diffuse window light",
            "at midday", "in the late afternoon", "at dusk", "under a desk lamp", "in harsh direct light",
            "in even lighting", "with soft shadows",
        ],
        "material": [
            "made of cotton", "made of wool", "made of silk", "made of linen", "made of leather", "made of paper",
            "made of ceramic", "made of glass", "made of metal", "made of plastic", "made of wood", "made of stone",
            "made of concrete", "made of clay", "made of velvet",
        ],
        "angle": [
            "close-up view", "seen straight on", "seen from an angle", "macro shot", "flat lay", "at a slight tilt",
            "seen from above", "extreme close-up", "wide view", "in sharp focus", "with shallow depth of field",
            "oblique view", "top-down view", "filling the frame", "centered in the frame",
        ],
    },
    "fgvc_aircraft": {
        "location": [
            "at an airport", "on the runway", "in the sky", "above the clouds", "at the terminal gate", "on the tarmac",
            "in a hangar", "over the ocean", "over a city", "over the mountains", "at an air show", "on a taxiway",
            "at a military airbase", "at an aviation museum", "over farmland",
        ],
        "time": [
            "at sunset", "at sunrise", "at night", "at noon", "in the morning", "in the afternoon", "at dusk",
            "on a clear day", "on a cloudy day", "in light rain", "in hazy weather", "in winter", "in summer",
            "on a foggy morning", "under a stormy sky",
        ],
        "colour": [
            "in white livery", "in gray military paint", "in a colorful airline livery", "in red and white livery",
            "in blue and white livery", "in polished silver", "in camouflage paint", "in dark gray",
            "in yellow and blue", "with a red tail", "in light gray livery", "in green and white livery",
            "in orange livery", "in black and yellow", "in navy blue livery",
        ],
        "angle": [
            "seen from below", "side profile view", "head-on view", "seen from behind", "from a low angle",
            "from the terminal window", "air-to-air shot", "seen from above", "three-quarter view",
            "close-up of the nose", "close-up of the engines", "wide shot", "telephoto shot", "centered in the frame",
            "shallow depth of field",
        ],
    },
}

# The slots of a user's own domain (a domain file without "slots"), in prompt order: words that fit any object
# and change the picture, never the class. No colour, size, material or state words: "a red fox ... in blue" or
# "a wooden spoon ... made of metal" would contradict a class named by them; no animal poses or food servings.
GENERIC_SLOTS = {
    "setting": [
        "on a wooden table", "on a shelf", "on the floor", "outdoors on the grass", "in a living room",
        "in a workshop", "in a kitchen", "on a desk", "in a shop display", "in a backyard", "in an office",
        "on a stone surface", "in a garage", "on a windowsill", "at a market stall",
    ],
    "lighting": [
        "in natural daylight", "in soft window light", "under studio lighting", "in warm evening light",
        "on an overcast day", "in bright sunlight", "in dim indoor light", "under fluorescent light",
        "with soft shadows", "with hard shadows", "in the morning", "in the afternoon", "at dusk",
        "under a desk lamp", "in even diffuse light",
    ],
    "photo": [
        "a casual snapshot", "a product photo", "a documentary photo", "a high-resolution photo",
        "taken with a phone camera", "a professional photograph", "a candid photo", "an amateur photo",
        "a catalogue photo", "a sharp detailed photo", "a photo with film grain", "a magazine photo",
        "a photo with natural colours", "a slightly blurry photo", "a well-lit photo",
    ],
    "angle": [
        "seen from above", "seen from the side", "seen from the front", "three-quarter view", "close-up shot",
        "wide shot", "from a low angle", "from a high angle", "at eye level", "centered in the frame",
        "off-center composition", "shallow depth of field", "in sharp focus", "with a blurred background",
        "filling the frame",
    ],
}
